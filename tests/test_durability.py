"""Durable means durable: a run outlives the crash of its app, of its sidecar
and of Redis, and a task published while the app is down waits for it.

Each fault strikes while the run's LLM call is in flight: the scripted LLM
holds its answer until the test lets it go. Dapr activities are
at-least-once, so the interrupted `call_llm` activity runs again after the
restart; the tests count those calls and check the conversation holds the
task and its answer exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import httpx
import psutil
import pytest

from helpers import record_figure, wait_for, workflow_key_mentioning
from tools import processes, services, settings, stack
from tools.settings import SERVICE_APP_ID


def _task(what: str) -> str:
    return f"{what} ({uuid.uuid4().hex[:8]})"


def _conversation(redis_client, instance_id: str) -> list[tuple[str, str]]:
    data = json.loads(redis_client.hget(f"{SERVICE_APP_ID}||assistant:_workflow_{instance_id}", "data"))
    return [(m["role"], m["content"]) for m in data["messages"]]


def _start_and_hold(service, scripted_llm, task: str) -> str:
    """Start a run and return once its LLM call is in flight (and held)."""
    scripted_llm.hold()
    instance_id = service.start_run(task)
    wait_for(lambda: any(not c.is_summary for c in scripted_llm.calls_mentioning(task)),
             "the run's LLM call to arrive", timeout_s=30)
    return instance_id


def _wait_for_process_exit(process: psutil.Process, what: str) -> None:
    wait_for(lambda: not process.is_running() or process.status() == psutil.STATUS_ZOMBIE, what, timeout_s=30)


@pytest.mark.parametrize("victim", ["app", "sidecar"])
def test_a_run_completes_after_its_process_is_killed_mid_llm_call(service, scripted_llm, redis_client, victim):
    task, answer = _task(f"Survive a killed {victim}"), f"Still here after the {victim} died"
    scripted_llm.answer_when(task, answer)
    instance_id = _start_and_hold(service, scripted_llm, task)
    app, daprd = service.processes()

    (app if victim == "app" else daprd).send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    # `dapr run` notices and takes the other one down; the whole unit is gone.
    _wait_for_process_exit(app, "the app to be gone")
    _wait_for_process_exit(daprd, "the sidecar to be gone")
    service.stop()
    scripted_llm.release()
    service.start()
    status = service.wait_until_done(instance_id, timeout_s=120)
    kill_to_complete_s = time.monotonic() - killed_at

    assert status["runtime_status"] == "COMPLETED", status
    assert json.loads(status["serialized_output"])["content"] == answer
    assert _conversation(redis_client, instance_id) == [("user", task), ("assistant", answer)]
    llm_calls = [c for c in scripted_llm.calls_mentioning(task) if not c.is_summary]
    # The killed attempt reached the LLM, then call_llm ran again after the restart.
    assert len(llm_calls) == 2
    record_figure(f"killed {victim} mid LLM call", kill_to_complete_s=round(kill_to_complete_s, 1),
                  llm_task_calls=len(llm_calls), activities_run_twice=["call_llm"])


def test_no_acknowledged_run_is_lost_when_redis_is_killed_mid_run(service, scripted_llm, redis_client, local_stack):
    task, answer = _task("Survive a killed Redis"), "Written down before it was acknowledged"
    scripted_llm.answer_when(task, answer)
    instance_id = _start_and_hold(service, scripted_llm, task)
    # Acknowledged runs, and the conversation so far, must outlive Redis.
    acknowledged = service.start_run(_task("Acknowledged just before the crash"))

    redis_process = processes.recorded("redis")
    assert redis_process is not None, "this test needs the Redis the stack started"
    redis_process.send_signal(signal.SIGKILL)
    _wait_for_process_exit(redis_process, "Redis to die")
    killed_at = time.monotonic()
    services.up()  # starts Redis again on the same data directory
    scripted_llm.release()
    status = service.wait_until_done(instance_id, timeout_s=120)

    assert status["runtime_status"] == "COMPLETED", status
    assert _conversation(redis_client, instance_id) == [("user", task), ("assistant", answer)]
    assert service.wait_until_done(acknowledged, timeout_s=120)["runtime_status"] == "COMPLETED"
    record_figure("killed Redis mid run", kill_to_complete_s=round(time.monotonic() - killed_at, 1))


def test_a_task_published_while_the_app_is_down_runs_when_it_is_back(service, scripted_llm, redis_client, local_stack):
    task = _task("Wait for me")
    scripted_llm.answer_when(task, "You came back")
    service.stop()
    # Another app publishes through its own sidecar while the agent is down.
    publisher = processes.spawn("publisher", [
        str(local_stack.cli), "run", "--app-id", "publisher", "--dapr-http-port", "3601",
        "--resources-path", str(service.resources)], env=service.env)
    try:
        processes.wait_until(lambda: processes.http_ok("http://127.0.0.1:3601/v1.0/healthz"), "the publisher's sidecar",
                         process=publisher, log=settings.LOG_DIR / "publisher.log")
        response = httpx.post("http://127.0.0.1:3601/v1.0/publish/agent-pubsub/assistant.topic", json={"task": task})
        assert response.status_code == 204
    finally:
        processes.stop_dapr_run("publisher")

    service.start()

    key = wait_for(lambda: workflow_key_mentioning(redis_client, task), "the waiting task to start a run")
    status = service.wait_until_done(key.rsplit("_", 1)[1])
    assert status["runtime_status"] == "COMPLETED"
    assert json.loads(status["serialized_output"])["content"] == "You came back"


def test_sigterm_on_make_serve_drains_and_leaves_nothing_listening(service, scripted_llm, llm_env):
    service.stop()  # make serve needs the service's ports
    # The held LLM call cannot finish, so the drain runs out (shortened here from 30 s).
    serve = subprocess.Popen([sys.executable, "-m", "tools.stack", "serve"], cwd=settings.ROOT,
                             env=llm_env | {"TDA_DRAIN_TIMEOUT": "5"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        processes.wait_until(stack.service_ready, "make serve", timeout_s=90)
        task = _task("In flight at SIGTERM")
        scripted_llm.answer_when(task, "Finished after the restart")
        instance_id = _start_and_hold(service, scripted_llm, task)

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=90) == stack.FORCED_STOP_EXIT  # the held call outlived the drain
    finally:
        if serve.poll() is None:
            serve.kill()

    listening = [port for port in settings.SERVICE_PORTS.values() if processes.port_in_use(port)]
    assert listening == []
    leftovers = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                 if "durable_agent_service.py" in " ".join(p.info["cmdline"] or [])
                 or "durable-agent-service" in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    # The stack services it found running are left alone.
    assert all(processes.recorded(name) for name in ("redis", "placement", "scheduler"))
    scripted_llm.release()
    service.start()
    status = service.wait_until_done(instance_id, timeout_s=120)
    assert status["runtime_status"] == "COMPLETED"
    assert json.loads(status["serialized_output"])["content"] == "Finished after the restart"
