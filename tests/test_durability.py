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

import httpx
import psutil
import pytest

from helpers import processes_mentioning, record_figure, wait_for, workflow_key_mentioning
from tools.proof import figures
from tools.stack import commands as stack
from tools.stack import processes, services, settings
from tools.stack.settings import APP_PORT, SERVICE_APP_ID


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
    def gone() -> bool:
        try:
            return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:  # it ended between the two questions
            return True

    wait_for(gone, what, timeout_s=30)


@pytest.mark.parametrize("victim", ["app", "sidecar"])
def test_a_run_completes_after_its_process_is_killed_mid_llm_call(service, scripted_llm, redis_client, victim):
    task, answer = scripted_llm.task(f"Survive a killed {victim}"), f"Still here after the {victim} died"
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
    calls = scripted_llm.calls_mentioning(task)
    # The killed attempt reached the LLM, then call_llm ran again after the restart; the
    # summary (asked by the activity `summarize`) was asked once. Each activity's calls are
    # told apart by their prompt, so what ran twice is read from what the LLM received.
    asked = {"call_llm": [c for c in calls if not c.is_summary], "summarize": [c for c in calls if c.is_summary]}
    activities_run_twice = [activity for activity, its_calls in asked.items() if len(its_calls) == 2]
    assert activities_run_twice == ["call_llm"], {activity: len(its_calls) for activity, its_calls in asked.items()}
    assert len(asked["summarize"]) == 1
    _figure(f"killed {victim} mid LLM call", kill_to_complete_s=round(kill_to_complete_s, 1),
            llm_task_calls=len(asked["call_llm"]), activities_run_twice=activities_run_twice)


def test_no_acknowledged_run_is_lost_when_redis_is_killed_mid_run(service, scripted_llm, redis_client, local_stack):
    task, answer = scripted_llm.task("Survive a killed Redis"), "Written down before it was acknowledged"
    scripted_llm.answer_when(task, answer)
    instance_id = _start_and_hold(service, scripted_llm, task)
    # Acknowledged runs, and the conversation so far, must outlive Redis.
    acknowledged = service.start_run(scripted_llm.task("Acknowledged just before the crash"))
    redis_process = processes.recorded("redis")
    assert redis_process is not None, "this test needs the Redis the stack started"
    app, daprd = service.processes()

    # The app and its sidecar die with Redis, so nothing that kept the run in memory is
    # left: what finishes the run is what Redis wrote to its append-only file.
    for process in (redis_process, daprd, app):
        process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    for process, what in ((redis_process, "Redis"), (daprd, "the sidecar"), (app, "the app")):
        _wait_for_process_exit(process, f"{what} to die")
    service.stop()  # what is left of its `dapr run`
    services.up()  # starts Redis again on the same data directory
    scripted_llm.release()
    service.start()
    restarted_at = time.monotonic()
    status = service.wait_until_done(instance_id, timeout_s=120)
    done_at = time.monotonic()

    assert status["runtime_status"] == "COMPLETED", status
    assert _conversation(redis_client, instance_id) == [("user", task), ("assistant", answer)]
    assert service.wait_until_done(acknowledged, timeout_s=120)["runtime_status"] == "COMPLETED"
    _figure("killed Redis, app and sidecar mid run", restart_to_complete_s=round(done_at - restarted_at, 1),
            kill_to_complete_s=round(done_at - killed_at, 1))


def test_a_task_published_while_the_app_is_down_runs_when_it_is_back(service, scripted_llm, redis_client, local_stack):
    task = scripted_llm.task("Wait for me")
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


def _make_serve(llm_env: dict[str, str], drain_timeout_s: float, log) -> subprocess.Popen:
    """`make serve` (after set-up) with the given drain deadline, ready for requests."""
    serve = subprocess.Popen([sys.executable, "-m", "tools.stack", "serve"], cwd=settings.ROOT,
                             env=llm_env | {"TDA_DRAIN_TIMEOUT": str(drain_timeout_s)},
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    processes.wait_until(stack.service_ready, "make serve", timeout_s=90, process=psutil.Process(serve.pid))
    return serve


def _nothing_of_the_service_left() -> None:
    assert [port for port in settings.SERVICE_PORTS.values() if processes.port_in_use(port)] == []
    assert processes_mentioning("durable_agent_service.py", SERVICE_APP_ID) == []
    # The stack services it found running are left alone.
    assert all(processes.recorded(name) for name in ("redis", "placement", "scheduler"))


DRAIN_TIMEOUT_S = 20


def test_sigterm_on_make_serve_drains_and_leaves_nothing_listening(service, scripted_llm, llm_env, redis_client,
                                                                  tmp_path):
    service.stop()  # make serve needs the service's ports
    task, answer = scripted_llm.task("In flight at SIGTERM"), "Answered during the drain"
    scripted_llm.answer_when(task, answer)
    registry_entry = f"{SERVICE_APP_ID}||agents:default:Assistant"
    with open(tmp_path / "serve.log", "wb") as log:
        serve = _make_serve(llm_env, DRAIN_TIMEOUT_S, log)
        try:
            instance_id = _start_and_hold(service, scripted_llm, task)
            app = next(p for p in psutil.Process(serve.pid).children(recursive=True)
                       if "durable_agent_service.py" in " ".join(p.cmdline()))
            assert redis_client.exists(registry_entry)

            serve.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            # The app stops taking requests but does not exit: it waits for its run's LLM call.
            wait_for(lambda: not processes.port_in_use(APP_PORT), "the app to stop listening", timeout_s=10)
            assert processes.alive(app), "the app exited without waiting for its run's LLM call"
            scripted_llm.release()
            released_at = time.monotonic()
            exit_code = serve.wait(timeout=DRAIN_TIMEOUT_S + 30)
            exited_at = time.monotonic()
        finally:
            if serve.poll() is None:
                serve.kill()
    output = (tmp_path / "serve.log").read_text(errors="replace")

    # A clean stop, within the drain window: the answer was received, the agent left the registry.
    assert exit_code == 0, f"make serve exited with status {exit_code}, not 0:\n{output[-3000:]}"
    assert exited_at - signalled_at < DRAIN_TIMEOUT_S, f"no exit within the drain window:\n{output[-3000:]}"
    assert [c.answered_status for c in scripted_llm.calls_mentioning(task) if not c.is_summary] == [200]
    assert not redis_client.exists(registry_entry)
    _nothing_of_the_service_left()
    # The answer given during the drain was kept: after the restart the run completes
    # without asking the LLM again.
    service.start()
    status = service.wait_until_done(instance_id, timeout_s=120)
    assert status["runtime_status"] == "COMPLETED", status
    assert json.loads(status["serialized_output"])["content"] == answer
    assert len([c for c in scripted_llm.calls_mentioning(task) if not c.is_summary]) == 1
    _figure("SIGTERM on make serve mid LLM call", release_to_exit_s=round(exited_at - released_at, 1))


def test_make_serve_stops_the_app_and_exits_non_zero_when_the_drain_deadline_passes(service, scripted_llm, llm_env,
                                                                                    tmp_path):
    service.stop()
    task, answer = scripted_llm.task("Still held at the deadline"), "Finished after the restart"
    scripted_llm.answer_when(task, answer)
    with open(tmp_path / "serve.log", "wb") as log:
        serve = _make_serve(llm_env, 3, log)
        try:
            instance_id = _start_and_hold(service, scripted_llm, task)
            serve.send_signal(signal.SIGTERM)
            exit_code = serve.wait(timeout=60)
        finally:
            if serve.poll() is None:
                serve.kill()
    output = (tmp_path / "serve.log").read_text(errors="replace")

    assert exit_code == stack.FORCED_STOP_EXIT, f"make serve exited with status {exit_code}:\n{output[-3000:]}"
    assert "the app did not finish within 3 s: stopping it now, not cleanly" in output
    _nothing_of_the_service_left()
    # The run was not lost: it resumes at the next start and asks the LLM again.
    scripted_llm.release()
    service.start()
    status = service.wait_until_done(instance_id, timeout_s=120)
    assert status["runtime_status"] == "COMPLETED", status
    assert json.loads(status["serialized_output"])["content"] == answer
    assert len([c for c in scripted_llm.calls_mentioning(task) if not c.is_summary]) == 2


def _figure(test: str, **values: object) -> None:
    record_figure(test, **values)
    figures.keep(test, **values)
