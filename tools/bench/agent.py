"""durable_agent_service.py with one of the changes `make bench` prices, for the benchmark only.

`dapr run ... -- python -m tools.bench.agent` runs the shipped script unchanged
after applying what these variables ask for (none of it is in the service):

    TDA_BENCH_NO_SUMMARY=1   the memory summary activity does nothing: no second LLM call, no
                             memory write (dapr-agents has no setting for it; this is what one would cost)
    TDA_BENCH_POOL=6         the workflow worker's thread pool at this size, whatever the script asks
    TDA_BENCH_SHARED_CLIENT=1   one DaprClient for the whole process, where dapr-agents 1.0.9 builds a
                             new one (channel, stubs, a health check) for every state call and LLM call
                             and closes it after: the change docs/upstream.md proposes
    TDA_BENCH_TOPIC_STOCK=1  the topic handled by dapr-agents' own consumer (one `asyncio.run` per
                             message, which waits for the run to end), not input_guard.py's
                             OneRunPerMessage, which the service uses
"""

from __future__ import annotations

import os
import runpy
import sys
import threading

import dapr.ext.workflow
from dapr_agents import DurableAgent
from dapr_agents.llm.dapr.client import DaprInferenceClient
from dapr_agents.storage.daprstores.base import DaprStoreBase

from tools.stack.settings import ROOT


def _no_summary(self, ctx, payload):  # noqa: ANN001 - the activity's own signature
    return {}


class _KeptOpen:
    """A DaprClient that `with client:` does not close: every caller gets the same channel."""

    def __init__(self, client) -> None:
        self.client = client

    def __enter__(self):
        return self.client

    def __exit__(self, *exc) -> None:
        return None

    def __getattr__(self, name: str):
        return getattr(self.client, name)


def share_one_client() -> None:
    """The two places dapr-agents 1.0.9 builds a client per call (`_build_client` of the state stores and
    of the Conversation API client, each used as `with self._build_client() as client:`) get one client,
    built by the first caller's factory, and kept open for the life of the process."""
    shared: list[_KeptOpen] = []
    lock = threading.Lock()

    def patched(original):
        def build(self):
            with lock:
                if not shared:
                    shared.append(_KeptOpen(original(self)))
                return shared[0]
        return build

    DaprStoreBase._build_client = patched(DaprStoreBase._build_client)
    DaprInferenceClient._build_client = patched(DaprInferenceClient._build_client)


def stock_topic() -> None:
    """GuardedRunner keeps its checks but wires the topic as dapr-agents does (its own consumer)."""
    from dapr_agents.workflow.runners import AgentRunner

    import input_guard

    input_guard.GuardedRunner._wire_pubsub_routes = AgentRunner._wire_pubsub_routes


if os.environ.get("TDA_BENCH_NO_SUMMARY") == "1":
    DurableAgent.summarize = _no_summary
if os.environ.get("TDA_BENCH_SHARED_CLIENT") == "1":
    share_one_client()
if os.environ.get("TDA_BENCH_TOPIC_STOCK") == "1":
    stock_topic()
if pool := os.environ.get("TDA_BENCH_POOL"):
    class _SizedRuntime(dapr.ext.workflow.WorkflowRuntime):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs | {"maximum_thread_pool_workers": int(pool)})

    dapr.ext.workflow.WorkflowRuntime = _SizedRuntime

sys.argv = [str(ROOT / "durable_agent_service.py")]
runpy.run_path(sys.argv[0], run_name="__main__")
