"""The local stack, the ground floor of tools/: its facts (settings.py, stack.env), processes,
the Dapr runtime, Redis, placement, scheduler and Zipkin, secure mode, the LLM choice, and
`make run / serve / up / stop` (commands.py)."""
