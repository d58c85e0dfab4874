"""Dozens of runs in flight at once.

A real LLM takes seconds per call, and each call holds one of the workflow
worker's threads for that long. With the scripted LLM holding every answer,
runs started at once must all wait on the LLM side by side: with the worker's
default pool (CPU count + 4 threads, six on two cores) only that many could,
and the rest would queue behind them. Not timed: the claim is how many wait
on the LLM together, which no machine's speed changes.

The runs are started through the sidecar's workflow API, as `POST /run` does
inside. Not through `POST /run` itself: dapr-agents 1.0.9's route keeps a
thread of the event loop's default pool (six on two cores) per run in flight,
to log its outcome, so while every run is held, later requests are not even
scheduled (docs/benchmark.md); with a real LLM they go through as runs finish.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from dapr.ext.workflow import DaprWorkflowClient

from helpers import TEST_LLM_TIMEOUT, record_figure, wait_for
from tools.runs.workflows import sidecar_grpc_port
from tools.stack.settings import SERVICE_APP_ID

RUNS_AT_ONCE = 40


@pytest.fixture
def patient_service(service):
    """The service with the shipped 60 s LLM timeout instead of the suite's short one: the first
    held call must not time out (and trip the circuit breaker) while the last runs reach the LLM."""
    resiliency = service.resources / "resiliency.yaml"
    suite_text = resiliency.read_text()
    resiliency.write_text(suite_text.replace(f"llm: {TEST_LLM_TIMEOUT}", "llm: 60s"))
    service.stop()
    service.start()
    try:
        yield service
    finally:
        resiliency.write_text(suite_text)
        service.stop()
        service.start()


def test_40_runs_started_at_once_all_wait_on_the_llm_together(patient_service, scripted_llm):
    from dapr_agents.tool.workflow.agent_tool import agent_workflow_id  # a 5 s import: only here

    workflows = DaprWorkflowClient(host="127.0.0.1", port=str(sidecar_grpc_port(SERVICE_APP_ID)))
    marker = scripted_llm.task("concurrency")
    tasks = [f"{marker} [{i}]" for i in range(RUNS_AT_ONCE)]
    scripted_llm.hold()
    try:
        with ThreadPoolExecutor(RUNS_AT_ONCE) as pool:
            instance_ids = list(pool.map(
                lambda task: workflows.schedule_new_workflow(workflow=agent_workflow_id("Assistant"),
                                                             input={"task": task}), tasks))
        wait_for(lambda: scripted_llm.in_flight >= RUNS_AT_ONCE,
                 f"{RUNS_AT_ONCE} LLM calls held at once (the worker pool lets only its size through)",
                 timeout_s=90, interval_s=0.2)
        held = scripted_llm.calls_mentioning(marker)
        # One call per run, each its own task: the runs wait side by side, none twice.
        assert sorted(str(call.messages[-1].get("content")) for call in held) == sorted(tasks)
        held_at_once = scripted_llm.in_flight
    finally:
        scripted_llm.release()

    statuses = [patient_service.wait_until_done(i, timeout_s=180)["runtime_status"] for i in instance_ids]
    assert set(statuses) == {"COMPLETED"}
    record_figure("runs started at once with the LLM held", runs=RUNS_AT_ONCE, llm_calls_held_at_once=held_at_once)
