"""The local model (`LLM=local`), measured: the server alone, then the agent on top of it.

    python -m tools.bench --local-model-only     # this part alone (about 3 minutes on 2 cores)
    python -m tools.bench --local-model          # the whole bench, with this part beside the scripted LLMs

`server_figures()` talks to any OpenAI-compatible server straight, as the Dapr
component does: the first answer after the server started, the later ones
(time to the first token and to the whole answer), its memory, and how often
the memory summary that dapr-agents asks for with a `json_schema`
response_format comes back as valid JSON. docs/local-model.md used it to choose
between Ollama and llama-cpp-python's server.

`agent_figures()` runs the service (the README's `dapr run`) with LLM=local:
runs per second at concurrency 1 and 8, the model's share of each run's time
(from the server's own request log) and of the CPU, and how many runs stored a
memory summary (the others logged dapr-agents' "LLM summarize failed").
Writes bench/results/local-model.json.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import redis

from tools.bench.cpu import ResourceMeter
from tools.bench.load import Load, summary_ms
from tools.stack import commands as stack
from tools.stack.processes import recorded
from tools.stack.settings import (
    LOCAL_MODEL_LABEL,
    LOCAL_MODEL_NAME,
    LOCAL_MODEL_URL,
    LOG_DIR,
    REDIS_PORT,
    ROOT,
    SERVICE_APP_ID,
)

RESULTS = ROOT / "bench" / "results" / "local-model.json"
HAIKU = "Write a haiku about programming."
SYSTEM = "You are a helpful assistant"
# What dapr-agents 1.0.9 asks after each run (agents/base.py, _summarize_conversation), and the
# response_format the Dapr component makes of its ConversationSummary model (a json_schema).
SUMMARY_PROMPT = ("Summarize the following conversation and any tool usage concisely for long-term memory storage. "
                  "Focus on key facts, decisions, and outcomes.\n\nConversation:\nuser: {task}\nassistant: {answer}"
                  "\n\nTool calls/results:\n[]")
SUMMARY_FORMAT = {"type": "json_schema", "json_schema": {"name": "ConversationSummary", "strict": False, "schema": {
    "type": "object", "title": "ConversationSummary", "required": ["summary"],
    "properties": {"summary": {"type": "string", "title": "Summary"}}}}}
# Topics for tasks that differ from run to run: at temperature 0 one task always gets one answer.
TOPICS = ("programming", "queues", "databases", "compilers", "caches", "networks", "recursion", "testing",
          "logs", "threads", "memory", "git", "types", "deadlines", "coffee", "bugs")
# Ollama logs every request: "[GIN] ... | 200 |  1.234567s |  127.0.0.1 | POST "/v1/chat/completions"",
# its duration as Go prints one (1m0s, 2.5s, 830ms).
GIN_LINE = re.compile(r"\|\s*(\d{3})\s*\|\s*([0-9.hmsµ]+)\s*\|[^|]*\|\s*POST\s+\"/v1/chat/completions\"")
DURATION_PART = re.compile(r"([0-9.]+)(h|ms|µs|ns|m|s)")
UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9}


def go_seconds(duration: str) -> float:
    return sum(float(value) * UNIT_S[unit] for value, unit in DURATION_PART.findall(duration))


# -- the server alone -------------------------------------------------------------------
def chat(client: httpx.Client, url: str, model: str, messages: list[dict], **extra) -> tuple[float, float, str]:
    """One streamed chat completion: (seconds to the first token, seconds to the whole answer, the answer)."""
    started = time.perf_counter()
    first, parts = None, []
    body = {"model": model, "messages": messages, "temperature": 0, "stream": True, **extra}
    with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.read().decode()[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content") or ""
            if delta and first is None:
                first = time.perf_counter() - started
            parts.append(delta)
    return first or 0.0, time.perf_counter() - started, "".join(parts)


def valid_summary(text: str) -> bool:
    """The answer parses as the JSON object dapr-agents' ConversationSummary wants."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and isinstance(value.get("summary"), str) and bool(value["summary"].strip())


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (Ollama runs the model in a child process)."""
    process = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20, 1)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    process = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])


def server_figures(url: str, model: str, pid: int, answers: int = 5, summaries: int = 8) -> dict:
    """Measure an OpenAI-compatible server that has just started (its first answer loads the model).

    Wall times depend on what else the machine runs; CPU seconds per answer do not, or much less."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": HAIKU}]
    with httpx.Client(timeout=300) as client:
        first_token_s, first_answer_s, answer = chat(client, url, model, messages)
        cpu_before = tree_cpu_s(pid)
        later = [chat(client, url, model, messages) for _ in range(answers)]
        cpu_per_answer = (tree_cpu_s(pid) - cpu_before) / answers
        same = sum(text == answer for _, _, text in later)
        valid, summary_s, failures = 0, [], []
        for topic in TOPICS[:summaries]:
            task = f"Write a haiku about {topic}."
            _, _, topic_answer = chat(client, url, model, [{"role": "user", "content": task}])
            prompt = SUMMARY_PROMPT.format(task=task, answer=topic_answer)
            try:
                _, seconds, text = chat(client, url, model, [{"role": "user", "content": prompt}],
                                        response_format=SUMMARY_FORMAT)
            except RuntimeError as exc:  # a server that refuses the json_schema format
                failures.append(str(exc)[:200])
                continue
            summary_s.append(seconds)
            valid += valid_summary(text)
    return {
        "model": model, "url": url,
        "first_token_s": round(first_token_s, 2), "first_answer_s": round(first_answer_s, 2),
        "later_first_token_s": round(statistics.median(t for t, _, _ in later), 3),
        "later_answer_s": round(statistics.median(s for _, s, _ in later), 3),
        "later_answers_same_as_first": f"{same} of {answers}", "answer": answer,
        "cpu_s_per_later_answer": round(cpu_per_answer, 3),
        "rss_mb": tree_rss_mb(pid),
        "json_summary_valid": f"{valid} of {summaries}",
        "json_summary_s": round(statistics.median(summary_s), 2) if summary_s else None,
        "json_summary_refused": failures[:1],
    }


# -- the agent on top of it ------------------------------------------------------------------
def model_requests(log: Path, offset: int) -> tuple[list[float], int, int]:
    """From byte `offset` of Ollama's log: the seconds of each chat completion it answered, how many it
    did not (500: the caller gave up, at the LLM timeout), and the log's new end."""
    with open(log, "rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    requests = GIN_LINE.findall(text)
    answered = [go_seconds(duration) for code, duration in requests if code == "200"]
    return answered, len(requests) - len(answered), offset + len(text.encode())


def model_meter() -> ResourceMeter:
    """The bench's CPU meter, also counting the model server and the process that runs the model."""
    meter = ResourceMeter()
    server = recorded("local-model")
    if server is not None:
        meter.processes["local model server"] = server
        for child in server.children(recursive=True):
            meter.processes["local model runner"] = child
    return meter


def agent_row(load: Load, concurrency: int, runs: int, log: Path) -> dict:
    *_, offset = model_requests(log, 0)
    tasks = [f"Write a haiku about {TOPICS[i % len(TOPICS)]}. [local c{concurrency} {i}]" for i in range(runs)]
    def run_once(task: str) -> float | str:
        """The run's seconds; what went wrong, for a run that failed (a model call past the LLM timeout)."""
        try:
            return load.run_once(task)
        except RuntimeError as exc:
            return str(exc)

    with model_meter() as meter, ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        outcomes = list(pool.map(run_once, tasks))
        elapsed = time.perf_counter() - started
    samples = [outcome for outcome in outcomes if isinstance(outcome, float)]
    failed = [outcome for outcome in outcomes if isinstance(outcome, str)]
    in_model, not_answered, _ = model_requests(log, offset)
    cpu = {name: round(seconds * 1000 / runs, 1) for name, seconds in meter.cpu_s.items()}
    model_cpu = cpu.get("local model server", 0.0) + cpu.get("local model runner", 0.0)
    return {"llm": "local model", "concurrency": concurrency, "runs": runs,
            "runs_per_s": round(len(samples) / elapsed, 3), "failed": len(failed), "failures": failed[:2],
            "model_calls_not_answered": not_answered,
            **(summary_ms(samples) if samples else {}), "model_calls": len(in_model),
            # Time inside the server (its queue included), over the runs' own time.
            "model_share_of_run_time": round(sum(in_model) / sum(samples), 2) if samples else None,
            "cpu_ms_per_run": cpu, "model_share_of_cpu": round(model_cpu / sum(cpu.values()), 2),
            "load_average_1min": round(os.getloadavg()[0], 1)}


def summaries_stored(client: redis.Redis, instance_ids: list[str]) -> int:
    """How many of the runs stored a memory summary in agent-memory (tests/test_service.py reads the same key)."""
    return sum(bool(client.hget(f"{SERVICE_APP_ID}||assistant:_memory_{i}", "data")) for i in instance_ids)


def agent_figures(levels: dict[int, int], summary_runs: int, step) -> dict:
    log = LOG_DIR / "local-model.log"
    results: dict = {"throughput": []}
    with stack.service_running({k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
                               log_name="bench-local-model-service", llm_switch="local"):
        load = Load(llm=None)  # runs are counted here, not at a scripted LLM
        try:
            step("local model: one warm-up run")
            load.run_once("Write a haiku about warming up.")
            for concurrency, runs in levels.items():
                step(f"local model: concurrency {concurrency} ({runs} runs)")
                results["throughput"].append(agent_row(load, concurrency, runs, log))
            step(f"local model: the memory summary over {summary_runs} runs of different tasks")
            ids = [load.start(f"Write a haiku about {TOPICS[i % len(TOPICS)]}. [summary {i}]")
                   for i in range(summary_runs)]
            for instance_id in ids:
                load.wait(instance_id)
            with redis.Redis(port=REDIS_PORT) as client:
                results["summary_stored"] = f"{summaries_stored(client, ids)} of {summary_runs}"
        finally:
            load.close()
    return results


def run(step, levels: dict[int, int] | None = None, summary_runs: int = 12) -> dict:
    """The agent with the local model, and the server's own figures from the same start."""
    results = {"model": LOCAL_MODEL_LABEL, "name": LOCAL_MODEL_NAME, "url": LOCAL_MODEL_URL}
    results |= agent_figures(levels or {1: 6, 8: 16}, summary_runs, step)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return results


def measure_our_server() -> dict:
    """Start the stack's model server (not preloaded: its first answer loads the model), measure it, stop it."""
    from tools.stack.processes import http_ok, require_free, spawn, stop, wait_until
    from tools.stack.services import local_model_service

    service = local_model_service()
    require_free(service.ports)
    process = spawn(service.name, service.argv)
    try:
        port = service.ports["local model"]
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/api/version"), "the local model's server",
                   process=process, log=LOG_DIR / "local-model.log")
        return server_figures(LOCAL_MODEL_URL, LOCAL_MODEL_NAME, process.pid)
    finally:
        stop(service.name)


SETUP_RESULTS = RESULTS.with_name("local-model-setup.json")
SERVER_RESULTS = {"Ollama": RESULTS.with_name("local-model-server-ollama.json"),
                  "llama-cpp-python": RESULTS.with_name("local-model-server-llama-cpp-python.json")}


def setup_figures() -> dict:
    """The install script's step timings (its cache folders), kept in bench/results/local-model-setup.json."""
    from tools.stack.settings import LOCAL_MODEL_DIR, OLLAMA_PREFIX

    figures = json.loads(SETUP_RESULTS.read_text()) if SETUP_RESULTS.exists() else {}
    for key, folder in (("server", OLLAMA_PREFIX), ("model", LOCAL_MODEL_DIR)):
        timings = folder / "setup-timings.json"
        if timings.exists():
            figures[key] = json.loads(timings.read_text())
    return figures


def time_make_run() -> dict:
    """`make run LLM=local` from start to end, cold (the set-up runs) or warm (it is there)."""
    from tools.stack.settings import local_model_installed

    kind = "warm" if local_model_installed() else "cold"
    started = time.perf_counter()
    result = subprocess.run(["make", "run", "LLM=local"], cwd=ROOT, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")})
    wall = round(time.perf_counter() - started, 1)
    if result.returncode != 0:
        raise RuntimeError(f"make run LLM=local failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    answer = next((line.removeprefix("== APP == ") for line in reversed(result.stdout.splitlines())
                   if line.startswith("== APP == {")), "")
    figures = setup_figures()
    figures[f"make_run_{kind}"] = {"wall_s": wall, "load_average_1min": round(os.getloadavg()[0], 1),
                                   "summary_line": result.stdout.strip().splitlines()[-1],
                                   "answer": json.loads(answer)["content"] if answer else None}
    SETUP_RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


DOC = ROOT / "docs" / "local-model.md"
DOC_MARKERS = ("<!-- local-model figures: written from bench/results/local-model*.json by "
               "`python -m tools.bench.local_model doc` -->", "<!-- end of the local-model figures -->")


def render_doc() -> str:
    """The figures part of docs/local-model.md, from the committed results files alone."""
    setup = json.loads(SETUP_RESULTS.read_text()) if SETUP_RESULTS.exists() else {}
    lines = ["| server | cold build or install (s) | first answer (s) | later answers (s) | first token, later (s) "
             "| CPU s per later answer | memory (MB) | JSON summary (`json_schema`) | load average |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for name, path in SERVER_RESULTS.items():
        if not path.exists():
            continue
        server = json.loads(path.read_text())
        refused = re.search(r"answered (\d{3})", server["json_summary_refused"][0]) if server["json_summary_refused"] \
            else None
        summary = f"refused (HTTP {refused.group(1)})" if refused else f"valid {server['json_summary_valid']}"
        install = f"{server['cold_install_s']:.0f}" if server.get("cold_install_s") else "?"
        lines.append(f"| {name} | {install} | {server['first_answer_s']} | {server['later_answer_s']} "
                     f"| {server['later_first_token_s']} | {server.get('cpu_s_per_later_answer', '?')} "
                     f"| {server['rss_mb']:.0f} | {summary} "
                     f"| {server['load_average_1min']} |")
    setup_s = 0
    for kind in ("server", "model"):
        steps = setup.get(kind, {}).get("steps_s", {})
        if steps:
            setup_s += sum(steps.values())
            lines += ["", f"Set-up of the {kind}, cold (s; {setup[kind]['cores']} cores, load average before: "
                          f"{setup[kind]['load_average_before']}): " + ", ".join(f"{k} {v}" for k, v in steps.items())
                      + f"; {sum(steps.values())} in all."]
    warm = setup.get("make_run_warm")
    if warm:
        lines += ["", f"`make run LLM=local`, warm (set up already): {warm['wall_s']} s from the command to its end "
                      f"(load average {warm['load_average_1min']}), of which the run under `dapr run`: "
                      + warm["summary_line"].split(" COMPLETED in ", 1)[1].split(";", 1)[0]
                      + f"; cold, on a machine without the set-up: about {setup_s + warm['wall_s']:.0f} s "
                        "(the set-up above, then the same)."]
        lines += ["", "Its answer, printed by the run:", "", "```", *warm["answer"].splitlines(), "```"]
    if RESULTS.exists():
        agent = json.loads(RESULTS.read_text())
        lines += ["", "| the agent with the local model | runs/s | p50 run (s) | p95 run (s) "
                      "| model's share of a run's time | model's share of the CPU |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in agent["throughput"]:
            lines.append(f"| concurrency {row['concurrency']} ({row['runs']} runs) | {row['runs_per_s']} "
                         f"| {row['p50_ms'] / 1000:.2f} | {row['p95_ms'] / 1000:.2f} "
                         f"| {row['model_share_of_run_time']} | {row['model_share_of_cpu']} |")
        lines += ["", f"Memory summaries stored: {agent['summary_stored']} runs of different tasks."]
    return "\n".join([DOC_MARKERS[0], *lines, DOC_MARKERS[1]])


README = ROOT / "README.md"
README_MARKERS = ("<!-- make run LLM=local: written from bench/results/local-model-setup.json by "
                  "`python -m tools.bench.local_model doc` -->", "<!-- end of make run LLM=local -->")


def render_readme() -> str:
    """The README's first-screen sample: the last line `make run LLM=local` printed, and how long it took."""
    setup = json.loads(SETUP_RESULTS.read_text()) if SETUP_RESULTS.exists() else {}
    warm = setup.get("make_run_warm")
    if not warm:
        return "\n".join([README_MARKERS[0], "(not measured yet: `python -m tools.bench.local_model make-run`)",
                          README_MARKERS[1]])
    set_up_s = sum(sum(setup.get(kind, {}).get("steps_s", {}).values()) for kind in ("server", "model"))
    return "\n".join([README_MARKERS[0], "```text", warm["summary_line"], "```",
                      f"It took {warm['wall_s']} s from the command to its end; the set-up before it, once per "
                      f"machine, {set_up_s} s on {setup['server']['cores']} cores.", README_MARKERS[1]])


def write_between(path: Path, markers: tuple[str, str], block: str) -> None:
    text = path.read_text()
    start, end = text.index(markers[0]), text.index(markers[1]) + len(markers[1])
    path.write_text(text[:start] + block + text[end:])


def write_doc() -> None:
    write_between(DOC, DOC_MARKERS, render_doc())
    write_between(README, README_MARKERS, render_readme())


def main(argv: list[str] | None = None) -> int:
    """`python -m tools.bench.local_model server|make-run|doc`: see the module's docstring."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.bench.local_model")
    parser.add_argument("what", choices=["server", "make-run", "doc"],
                        help="server: the model server alone; make-run: time `make run LLM=local`; "
                             "doc: rewrite the figures of docs/local-model.md")
    parser.add_argument("--url", help="server: an OpenAI-compatible server already running (default: start ours)")
    parser.add_argument("--model", default=LOCAL_MODEL_NAME)
    parser.add_argument("--pid", type=int, help="server: the server's pid, for its memory")
    parser.add_argument("--name", default="Ollama", choices=list(SERVER_RESULTS), help="server: which one it is")
    parser.add_argument("--install-s", type=float, help="server: how long its cold build or install took")
    args = parser.parse_args(argv)
    if args.what == "doc":
        write_doc()
        return 0
    if args.what == "make-run":
        print(json.dumps(time_make_run(), indent=2))
        return 0
    figures = server_figures(args.url, args.model, args.pid) if args.url else measure_our_server()
    if args.install_s is not None:
        figures["cold_install_s"] = args.install_s
    elif not args.url:
        steps = setup_figures().get("server", {}).get("steps_s", {})
        figures["cold_install_s"] = sum(steps.values()) or None
    figures["load_average_1min"] = round(os.getloadavg()[0], 1)
    SERVER_RESULTS[args.name].write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
