"""A workflow app for tests/test_runtime_fixes.py: busy runs, terminated while they work.

Each run calls a quick activity and continues as new with its result, for ever, so its inbox keeps
receiving activity results. The app starts RUNS of them, lets them work, terminates each one (the
terminate call waits, in the sidecar, until the run has ended) and prints one line, RESULT {...}: how
many runs ended TERMINATED within the deadline, and the ids and states of the others.

Run under `dapr run` (the Dapr Python SDK finds its sidecar in DAPR_GRPC_PORT):
    python tests/runtime_fixes_terminate_app.py RUNS
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import dapr.ext.workflow as wf

WORK_FOR_S, DEADLINE_S = 3.0, 30.0
runtime = wf.WorkflowRuntime()


@runtime.activity(name="tick")
def tick(ctx, n: int) -> int:
    return n + 1


@runtime.workflow(name="busy")
def busy(ctx: wf.DaprWorkflowContext, n: int):
    n = yield ctx.call_activity(tick, input=n)
    ctx.continue_as_new(n)


def status(client: wf.DaprWorkflowClient, instance_id: str) -> str:
    try:
        state = client.get_workflow_state(instance_id, fetch_payloads=False)
    except Exception as error:  # noqa: BLE001 - a failed read is a state to report, not a crash
        return f"unreadable ({type(error).__name__})"
    return state.runtime_status.name if state else "unknown"


def main(runs: int) -> None:
    runtime.start()
    client = wf.DaprWorkflowClient()
    ids = [client.schedule_new_workflow(workflow=busy, input=0) for _ in range(runs)]
    deadline = time.monotonic() + WORK_FOR_S
    while time.monotonic() < deadline:  # every run has started working
        if all(status(client, i) == "RUNNING" for i in ids):
            break
        time.sleep(0.2)
    time.sleep(WORK_FOR_S)
    # Terminate calls that never return (a dropped terminate) must not stop the count: each in a thread.
    pool = ThreadPoolExecutor(max_workers=runs)
    for instance_id in ids:
        pool.submit(client.terminate_workflow, instance_id)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        states = {i: status(client, i) for i in ids}
        left = {i: s for i, s in states.items() if s != "TERMINATED"}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print("RESULT " + json.dumps({"runs": runs, "terminated": runs - len(left), "not_terminated": left}),
          flush=True)
    os._exit(0)  # threads stuck in a terminate call would keep the process alive


if __name__ == "__main__":
    main(int(sys.argv[1]))
