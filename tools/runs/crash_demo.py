"""`make crash-demo`: watch a run outlive the crash of its app, in under a minute, offline.

Starts the stack (or uses the one already up) and the service with the README's
`dapr run`, answering from a slow scripted LLM that lives in this process (5 s per
answer; no key, no network). Then, printing each step as it happens:
1. starts a run with `POST /run`;
2. while the run's LLM call is in flight, kills the app with SIGKILL: no shutdown,
   no cleanup, the same as a power cut for the process (`dapr run` takes its sidecar down too);
3. starts the service again: the workflow engine finds the unfinished run in Redis and
   resumes it, and the activity that was cut short (`call_llm`) runs again;
4. prints the run's history, the number of LLM calls for its task (two: the one the kill
   cut short and the one after the restart) and the conversation kept in Redis, which
   holds the task and the answer once.
Everything it started, it stops.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import httpx
import psutil
import redis

from tools.runs.demos import clock, run_demo, say
from tools.runs.workflows import finished_status, history, sidecar_grpc_port
from tools.stack import commands as stack
from tools.stack.llm import choose_llm
from tools.stack.processes import StackError, alive, recorded, stop_dapr_run, wait_until
from tools.stack.scripted_llm import ScriptedLLM
from tools.stack.settings import DASHBOARD_PORT, LOG_DIR, REDIS_PORT, SERVICE_APP_ID, SERVICE_URL

TASK = "Write a haiku about surviving a crash."
ANSWER = "Killed mid-sentence,\nthe workflow wakes in Redis,\nfinishes the verse."
LLM_DELAY_S = 5.0
RUN_TIMEOUT_S = 120.0


def app_process() -> psutil.Process:
    """The app (python durable_agent_service.py) that the recorded `dapr run` started, beside its daprd."""
    cli = recorded("service")
    if cli is None:
        raise StackError("the service is not running")
    return next(p for p in cli.children() if p.name() != "daprd")


def demo(llm: ScriptedLLM) -> str:
    log = LOG_DIR / "crash-demo.log"
    llm.answer_when(TASK, ANSWER)
    llm.set_delay(LLM_DELAY_S)
    say(f"the stack and the service (`dapr run`, log: {log}); the scripted LLM takes {LLM_DELAY_S:.0f} s per answer")
    with stack.running(tracing=False) as runtime:
        argv, env = stack.dapr_run(runtime, stack.SERVICE_APP, choose_llm(llm.client_env()), base_env=llm.client_env())
        try:
            stack.start_service(argv, env, log)
            with httpx.Client(base_url=SERVICE_URL, timeout=30) as client:
                response = client.post("/run", json={"task": TASK})
                response.raise_for_status()
                instance_id = response.json()["instance_id"]
                started = time.monotonic()
                say(f"{clock(started)} run {instance_id} started: {TASK!r}")
                wait_until(lambda: any(not c.is_summary for c in llm.calls_mentioning(TASK)), "the run's LLM call")
                app = app_process()
                app.send_signal(signal.SIGKILL)
                say(f"{clock(started)} the run's LLM call is in flight: SIGKILL to the app, pid {app.pid} "
                    "(python durable_agent_service.py)")
                wait_until(lambda: not alive(app), "the killed app to be gone")
                stop_dapr_run("service")  # what `dapr run` left: its sidecar, if it is still there
                say(f"{clock(started)} the app is gone and its sidecar with it; starting the service again")
                stack.start_service(argv, env, log, append=True)
                say(f"{clock(started)} the service is back; the workflow engine resumes the run from Redis")
                status = finished_status(client, instance_id, RUN_TIMEOUT_S, LOG_DIR / "crash-demo.log")
                say(f"{clock(started)} run {instance_id} {status['runtime_status']}")
            if status["runtime_status"] != "COMPLETED":
                raise StackError(f"the run ended {status['runtime_status']}: {status.get('failure_details')}")
            show_run(instance_id, llm)
        finally:
            stop_dapr_run("service")
    return instance_id


def show_run(instance_id: str, llm: ScriptedLLM) -> None:
    say(f"its history, as `make history ID={instance_id}` prints it:")
    rows = history(instance_id, sidecar_grpc_port(SERVICE_APP_ID))
    print(f"  {'ID':>4}  {'TYPE':<24} {'NAME':<44} {'ELAPSED':>10}")
    for row in rows:
        print(f"  {row['event_id']:>4}  {row['type']:<24} {row['name']:<44} {row['elapsed_ms']:>8.1f}ms")
    call_llm = [row for row in rows if row["name"].endswith(".call_llm")]
    calls = [call for call in llm.calls_mentioning(TASK) if not call.is_summary]
    say(f"call_llm in the history: {', '.join(row['type'] for row in call_llm)} "
        f"({call_llm[0]['elapsed_ms']:.0f} ms to {call_llm[-1]['elapsed_ms']:.0f} ms). An activity's event is "
        "written when it completes; the attempt the kill cut short never did, so it left none")
    say(f"LLM calls for this task: {len(calls)} (the one the kill cut short, and the one after the restart)")
    key = f"{SERVICE_APP_ID}||assistant:_workflow_{instance_id}"
    client = redis.Redis(port=REDIS_PORT, decode_responses=True)
    try:
        messages = json.loads(client.hget(key, "data") or "{}").get("messages", [])
    finally:
        client.close()
    say(f"the conversation in Redis ({key}): {len(messages)} messages, the task and the answer once")
    for message in messages:
        indent = "\n" + " " * (len(message["role"]) + 4)
        print(f"  {message['role']}: " + str(message["content"]).replace("\n", indent))


def show_dashboard_link(instance_id: str) -> None:
    say(f"see this run in your browser: `make serve`, then `make dashboard` in another terminal, "
        f"and open http://localhost:{DASHBOARD_PORT}/#/run/{instance_id}")


def main() -> int:
    # This module's ScriptedLLM, looked up now: tests/test_crash_demo.py replaces it to read the LLM's calls.
    return run_demo(demo, ScriptedLLM, then=show_dashboard_link)


if __name__ == "__main__":
    sys.exit(main())
