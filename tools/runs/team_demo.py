"""`make team-demo`: the service's assistant finds the Poet in the registry and hands it work, durably across
two apps, offline.

Starts the stack (or uses the one already up), the service (durable_agent_service.py) and
examples/team/poet_agent.py under `dapr run`, with a scripted LLM in this process playing both models:
the assistant's decides to call the Poet's tool, the Poet's writes a haiku. Then, printing each step:
1. shows the Poet's entry in the registry the assistant reads, and the tool dapr-agents makes of it;
2. sends a task to the assistant; its run (the parent, in the service's app) calls the Poet as a child
   workflow in the Poet's app, whose run waits on its LLM (the scripted LLM holds the answer);
3. kills the Poet's app and its sidecar with SIGKILL while the child run waits, and starts them again;
4. shows both runs complete, the answer built on the Poet's, and which LLM calls were made twice: only the
   one the kill cut.
Everything it started, it stops.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import httpx

from tools.runs.demos import clock, run_demo, say
from tools.runs.team_app import POET, POET_REGISTRY_KEY, PoetApp, registry_entry, registry_index
from tools.runs.workflows import (
    FINISHED,
    STATUS,
    _metadata,
    _stub,
    family,
    finished_status,
    pb,
    read_again_if_half_written,
    sidecar_grpc_port,
)
from tools.stack import commands as stack
from tools.stack.llm import choose_llm
from tools.stack.processes import StackError, alive, stop_dapr_run, wait_until
from tools.stack.scripted_llm import Script, ScriptedLLM
from tools.stack.settings import LOG_DIR, SERVICE_APP_ID, SERVICE_URL, TEAM_APP_ID

TASK = "Ask the Poet for a haiku about durable workflows."
POET_TASK = "Write a haiku about durable workflows."
HAIKU = "Killed mid-thought, I wake;\nthe history in Redis\nfinishes my line."
FINAL = "Here is the Poet's haiku: {tool_result}"
RUN_TIMEOUT_S = 120.0


def run_status(app_id: str, instance_id: str) -> str:
    state = read_again_if_half_written(lambda: _stub(sidecar_grpc_port(app_id)).GetInstance(
        pb.GetInstanceRequest(instanceId=instance_id), metadata=_metadata(), timeout=10))
    return STATUS.get(state.workflowState.workflowStatus, "?") if state.exists else "UNKNOWN"


def child_of(instance_id: str) -> dict:
    found: dict = {}
    wait_until(lambda: found.update(next(iter(family(instance_id, sidecar_grpc_port(SERVICE_APP_ID))["children"]),
                                         {})) or bool(found), "the assistant's run to start a child run",
               timeout_s=RUN_TIMEOUT_S)
    return found


def llm_calls(script: Script, task: str) -> list[str]:
    """The script's calls for `task` (summaries left out), each as the messages it sent."""
    return [json.dumps(call.messages) for call in script.calls_mentioning(task) if not call.is_summary]


def demo(llm: ScriptedLLM) -> None:
    poet_llm = llm.script("the Poet's model")
    poet_llm.claim(POET_TASK)
    poet_llm.answer_when(POET_TASK, HAIKU)
    llm.call_tool_when(TASK, POET, {"task": POET_TASK}, FINAL)
    service_log, poet_log = LOG_DIR / "team-demo-service.log", LOG_DIR / "team-demo-poet.log"
    say(f"the stack, the service and examples/team/poet_agent.py (`dapr run`, logs: {service_log}, {poet_log}); "
        "the scripted LLM plays both models")
    with stack.running(tracing=False) as runtime:
        env = llm.client_env()
        argv, service_env = stack.dapr_run(runtime, stack.SERVICE_APP, choose_llm(env), base_env=env)
        poet = PoetApp(runtime, env, poet_log)
        try:
            stack.start_service(argv, service_env, service_log)
            poet.start()
            entry = registry_entry()["agent"]
            say(f"the registry the assistant reads (Redis key {POET_REGISTRY_KEY.rsplit(':', 1)[0]}:_index) "
                f"lists {registry_index()}")
            print(f"  {POET}: app {entry['appid']}, workflow {entry['metadata']['workflow_name']}, "
                  f"role {entry['role']!r}, goal {entry['goal']!r}")
            with httpx.Client(base_url=SERVICE_URL, timeout=30) as client:
                poet_llm.hold()
                response = client.post("/run", json={"task": TASK})
                response.raise_for_status()
                parent = response.json()["instance_id"]
                started = time.monotonic()
                say(f"{clock(started)} run {parent} started in app {SERVICE_APP_ID}: {TASK!r}")
                child = child_of(parent)
                wait_until(lambda: poet_llm.in_flight == 1, "the Poet's run to wait on its LLM",
                           timeout_s=RUN_TIMEOUT_S)
                (offered,) = {call.tools for call in llm.calls_mentioning(TASK) if not call.is_summary}
                say(f"{clock(started)} the assistant's model was offered the tools {list(offered)} and called "
                    f"{POET}(task={POET_TASK!r})")
                say(f"{clock(started)} parent run {parent}  app {SERVICE_APP_ID}  "
                    f"{run_status(SERVICE_APP_ID, parent)}")
                say(f"{clock(started)} child run  {child['instance_id']}  app {child['app_id']}  "
                    f"{run_status(TEAM_APP_ID, child['instance_id'])}  (its LLM call is held)")
                app_process, daprd = poet.processes()
                for process in (app_process, daprd):
                    process.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                say(f"{clock(started)} SIGKILL to the Poet (pid {app_process.pid}) and its sidecar (pid {daprd.pid}) "
                    "while the child run waits on its LLM")
                wait_until(lambda: not alive(app_process) and not alive(daprd), "the killed processes to be gone")
                stop_dapr_run("team-poet")  # the `dapr run` they leave behind
                poet.start(append=True)
                say(f"{clock(started)} the Poet and its sidecar are back ({time.monotonic() - killed:.1f} s after the "
                    "kill); the held answer is let go")
                poet_llm.release()
                status = finished_status(client, parent, RUN_TIMEOUT_S, service_log)
                done = time.monotonic()
            say(f"{clock(started)} parent run {parent} {status['runtime_status']} "
                f"({done - killed:.1f} s after the kill)")
            if status["runtime_status"] != "COMPLETED":
                raise StackError(f"the run ended {status['runtime_status']}: {status.get('failure_details')}")
            wait_until(lambda: run_status(TEAM_APP_ID, child["instance_id"]) in FINISHED, "the child run to finish")
            back = family(child["instance_id"], poet.sidecar_grpc_port())["parent"]
            say(f"{clock(started)} child run {child['instance_id']} {run_status(TEAM_APP_ID, child['instance_id'])}; "
                f"its history names its parent: run {back['instance_id']} of app {back['app_id']}")
            say(f"the answer: {json.loads(status['serialized_output'])['content']}")
            poet_calls, assistant_calls = llm_calls(poet_llm, POET_TASK), llm_calls(llm, TASK)
            say(f"the Poet's LLM was asked {len(poet_calls)} times, the same question twice (the call the kill cut, "
                f"then again): {len(set(poet_calls))} distinct")
            say(f"the assistant's LLM was asked {len(assistant_calls)} times, none again: "
                f"{len(set(assistant_calls))} distinct")
        finally:
            poet_llm.close()
            poet.stop()
            stop_dapr_run("service")


def main() -> int:
    return run_demo(demo)


if __name__ == "__main__":
    sys.exit(main())
