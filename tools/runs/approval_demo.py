"""`make approval-demo`: a refund waits for a human through a SIGKILL of its app and sidecar, offline.

Starts the stack (or uses the one already up) and examples/approval/refund_agent.py under
`dapr run`, with a scripted LLM in this process playing a model that decides to call the
`refund` tool (no key, no network). Then, printing each step as it happens:
1. sends a task; the model asks for refund(order_id, amount), the agent's before_tool_call
   hook requires approval, and the run waits for the event `approval_response_<id>`;
2. shows the run waiting (tool, arguments, time left), read from its history;
3. kills the app and its sidecar with SIGKILL while the run waits, and starts them again;
4. approves, as `make approve ID=<instance>` does: an event raised through the sidecar's workflow API;
5. shows the run complete, the answer built on the tool's result, and the refund recorded once.
Everything it started, it stops.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import httpx
import redis

from tools.runs.approvals import answer, describe, waiting_approval
from tools.runs.demos import clock, run_demo, say
from tools.runs.refund_app import APP_URL, RefundApp, refund_records
from tools.runs.workflows import finished_status, history, sidecar_grpc_port
from tools.stack import commands as stack
from tools.stack.processes import StackError, alive, stop_dapr_run, wait_until
from tools.stack.scripted_llm import ScriptedLLM
from tools.stack.settings import APPROVAL_APP_ID, LOG_DIR, REDIS_PORT

ORDER_ID = "A-1042"
TASK = f"Order {ORDER_ID} arrived broken; please refund the customer's 42.50 EUR."
FINAL = "Done: {tool_result}. The customer will see it in a few days."
RUN_TIMEOUT_S = 120.0


def forget_refund(order_id: str) -> None:
    """A demo run again refunds the same order: forget the refund an earlier run recorded (the tool would
    rightly refuse to record it twice)."""
    client = redis.Redis(port=REDIS_PORT)
    try:
        client.delete(f"{APPROVAL_APP_ID}||refund:{order_id}")
    finally:
        client.close()


def wait_for_approval_request(instance_id: str) -> dict:
    found: dict = {}
    wait_until(lambda: found.update(waiting_approval(instance_id, sidecar_grpc_port(APPROVAL_APP_ID)) or {})
               or bool(found), "the run to wait for an approval", timeout_s=RUN_TIMEOUT_S)
    return found


def demo(llm: ScriptedLLM) -> str:
    log = LOG_DIR / "approval-demo.log"
    llm.call_tool_when(TASK, "refund", {"order_id": ORDER_ID, "amount": 42.5}, FINAL)
    say(f"the stack and examples/approval/refund_agent.py (`dapr run`, log: {log}); "
        "the scripted LLM plays a model that calls the refund tool")
    with stack.running(tracing=False) as runtime:
        app = RefundApp(runtime, llm.client_env(), log)
        try:
            app.start()
            forget_refund(ORDER_ID)
            with httpx.Client(base_url=APP_URL, timeout=30) as client:
                response = client.post("/run", json={"task": TASK})
                response.raise_for_status()
                instance_id = response.json()["instance_id"]
                started = time.monotonic()
                say(f"{clock(started)} run {instance_id} started: {TASK!r}")
                waiting = wait_for_approval_request(instance_id)
                say(f"{clock(started)} the model called the tool; the run waits for a human:")
                print(f"  {describe(waiting)}")
                say(f"  (it waits for the event {waiting['event']}; refunds recorded so far: "
                    f"{len(refund_records(ORDER_ID))})")
                app_process, daprd = app.processes()
                for process in (app_process, daprd):
                    process.send_signal(signal.SIGKILL)
                say(f"{clock(started)} SIGKILL to the app (pid {app_process.pid}) and its sidecar (pid {daprd.pid}) "
                    "while the run waits")
                wait_until(lambda: not alive(app_process) and not alive(daprd), "the killed processes to be gone")
                stop_dapr_run("refund-agent")  # the `dapr run` they leave behind
                app.start(append=True)
                say(f"{clock(started)} app and sidecar are back; the run still waits:")
                print(f"  {describe(wait_for_approval_request(instance_id))}")
                answer(instance_id, True, sidecar_grpc_port(APPROVAL_APP_ID), reason="approved in the demo")
                say(f"{clock(started)} approved, as `make approve ID={instance_id}` does: the event is raised "
                    "through the sidecar's workflow API")
                status = finished_status(client, instance_id, RUN_TIMEOUT_S, LOG_DIR / "approval-demo.log")
                say(f"{clock(started)} run {instance_id} {status['runtime_status']}")
            if status["runtime_status"] != "COMPLETED":
                raise StackError(f"the run ended {status['runtime_status']}: {status.get('failure_details')}")
            show_run(instance_id, status)
        finally:
            app.stop()
    return instance_id


def show_run(instance_id: str, status: dict) -> None:
    say(f"its history, as `make history ID={instance_id} APP={APPROVAL_APP_ID}` prints it:")
    rows = history(instance_id, sidecar_grpc_port(APPROVAL_APP_ID))
    print(f"  {'ID':>4}  {'TYPE':<24} {'NAME':<52}")
    for row in rows:
        print(f"  {row['event_id']:>4}  {row['type']:<24} {row['name'][:52]:<52}")
    say(f"the answer: {json.loads(status['serialized_output'])['content']}")
    records = refund_records(ORDER_ID)
    say(f"refunds recorded for order {ORDER_ID}: {len(records)} (the version Redis keeps of each record counts "
        "its writes)")
    for record in records:
        print(f"  {record['key']}  version {record.get('version')}  {record.get('data')}")


def main() -> int:
    return run_demo(demo)


if __name__ == "__main__":
    sys.exit(main())
