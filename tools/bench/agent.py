"""durable_agent_service.py with one of the changes `make bench` prices, for the benchmark only.

`dapr run ... -- python -m tools.bench.agent` runs the shipped script unchanged
after applying what these variables ask for:

    TDA_BENCH_NO_SUMMARY=1   the memory summary activity does nothing: no second LLM call, no
                             memory write (dapr-agents has no setting for it; this is what one would cost)
    TDA_BENCH_POOL=6         the workflow worker's thread pool at this size, whatever the script asks
    TDA_BENCH_PUBSUB_NO_WAIT=1   a task taken from the topic is acknowledged once its run is scheduled,
                             without waiting for the run to end (dapr-agents 1.0.9 waits, so pub/sub
                             runs one run at a time; see docs/benchmark.md)
"""

from __future__ import annotations

import os
import runpy
import sys

import dapr.ext.workflow
from dapr_agents import DurableAgent
from dapr_agents.workflow.utils import subscription

from tools.stack.settings import ROOT


def _no_summary(self, ctx, payload):  # noqa: ANN001 - the activity's own signature
    return {}


if os.environ.get("TDA_BENCH_NO_SUMMARY") == "1":
    DurableAgent.summarize = _no_summary
if os.environ.get("TDA_BENCH_PUBSUB_NO_WAIT") == "1":
    # The detached "log the outcome" waiter is what holds each message until its run ends.
    subscription._StreamSubscriber._spawn_outcome_logger = lambda self, instance_id: None
if pool := os.environ.get("TDA_BENCH_POOL"):
    class _SizedRuntime(dapr.ext.workflow.WorkflowRuntime):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs | {"maximum_thread_pool_workers": int(pool)})

    dapr.ext.workflow.WorkflowRuntime = _SizedRuntime

sys.argv = [str(ROOT / "durable_agent_service.py")]
runpy.run_path(sys.argv[0], run_name="__main__")
