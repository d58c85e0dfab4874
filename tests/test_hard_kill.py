"""A hard kill of `make serve` or `make run` (SIGKILL to its whole process
group: a closed terminal, an OOM kill, `kill -9` of the job) leaves nothing
serving, the next start comes up without a manual step, and the run that was
in flight completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import psutil

from helpers import processes_mentioning, stack_processes, wait_for
from tools.runs.workflows import history_from_redis
from tools.stack import commands as stack
from tools.stack import console, processes, services, settings

ALL_PORTS = settings.STACK_PORTS | settings.SERVICE_PORTS
ONE_SHOT_TASK = "Write a haiku about programming."


def _make(target: str, env: dict[str, str], started: list[subprocess.Popen]) -> subprocess.Popen:
    """`make <target>` in a process group of its own, as a terminal would start it."""
    settings.LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(settings.LOG_DIR / f"make-{target}-{len(started)}.log", "wb") as log:
        command = subprocess.Popen(["make", "-s", target], cwd=settings.ROOT, env=env, start_new_session=True,
                                   stdout=log, stderr=subprocess.STDOUT)
    started.append(command)
    return command


def _kill_group(command: subprocess.Popen) -> None:
    if command.poll() is None:
        os.killpg(command.pid, signal.SIGKILL)
    command.wait(timeout=30)


def _gone(members: list[psutil.Process]) -> bool:
    return not any(processes.alive(process) for process in members)


def test_a_hard_kill_of_make_serve_leaves_nothing_serving_and_the_run_completes_after_a_restart(
        service, scripted_llm, llm_env):
    service.stop()
    # `make serve` is to start the whole stack itself, as on a fresh machine.
    session_services = [name for name in ("zipkin", "scheduler", "placement", "redis") if processes.stop(name)]
    task = scripted_llm.task("In flight at a hard kill")
    scripted_llm.answer_when(task, "Finished after the hard kill")
    commands: list[subprocess.Popen] = []
    try:
        first = _make("serve", llm_env, commands)
        processes.wait_until(stack.service_ready, "make serve", timeout_s=120)
        started_by_first = stack_processes()
        scripted_llm.hold()
        instance_id = service.start_run(task)
        wait_for(lambda: scripted_llm.calls_mentioning(task), "the run's LLM call to arrive", timeout_s=30)

        _kill_group(first)

        wait_for(lambda: _gone(started_by_first), "every process of the killed make serve to end", timeout_s=30)
        assert [port for port in ALL_PORTS.values() if processes.port_in_use(port)] == []
        scripted_llm.release()

        second = _make("serve", llm_env, commands)
        processes.wait_until(stack.service_ready, "make serve after the hard kill", timeout_s=120)
        status = service.wait_until_done(instance_id, timeout_s=120)
        assert status["runtime_status"] == "COMPLETED"
        assert json.loads(status["serialized_output"])["content"] == "Finished after the hard kill"

        os.killpg(second.pid, signal.SIGINT)  # Ctrl+C: the terminal signals the whole group
        second.wait(timeout=90)  # make itself ends by the signal (-2); what counts is what is left
        assert [port for port in ALL_PORTS.values() if processes.port_in_use(port)] == []
        assert processes_mentioning("durable_agent_service.py") == []
    finally:
        scripted_llm.release()
        for command in commands:
            _kill_group(command)
        services.stop_leftovers()
        if session_services:
            services.up(tracing="zipkin" in session_services)


def test_a_hard_kill_of_make_run_leaves_nothing_running_and_the_next_run_works(local_stack, scripted_llm, llm_env):
    # durable_agent_minimal.py always asks this: the calls that mention it are this test's runs'.
    scripted_llm.claim(ONE_SHOT_TASK)
    scripted_llm.hold()
    commands: list[subprocess.Popen] = []
    try:
        first = _make("run", llm_env, commands)
        wait_for(lambda: scripted_llm.task_calls(), "the one-shot run's LLM call to arrive", timeout_s=120)
        killed_run = console.STARTED.search(stack.ONE_SHOT_LOG.read_text(errors="replace"))["id"]
        app = processes_mentioning("durable_agent_minimal.py")
        assert app, "the one-shot app is not running"

        _kill_group(first)

        def left() -> list[str]:
            return [" ".join(p.cmdline())[:150] for p in processes_mentioning("durable-agent-minimal",
                                                                                 "durable_agent_minimal.py")]
        wait_for(lambda: not left(), lambda: f"the killed run's dapr run, daprd and app to end: {left()} are left",
                 timeout_s=30)
    finally:
        scripted_llm.release()
        for command in commands:
            _kill_group(command)

    second = subprocess.run(["make", "-s", "run"], cwd=settings.ROOT, env=llm_env, capture_output=True, text=True,
                            timeout=180)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert " COMPLETED in " in second.stdout.strip().splitlines()[-1]
    # The stack the session started is still there, untouched by either run.
    assert all(processes.recorded(name) for name in ("redis", "placement", "scheduler"))
    # The killed run is not left behind for a later `make run` to finish: this next one resumed it (its
    # reminder is due at once, and it has fewer steps left than the new run has) and it completed.
    killed_history = history_from_redis(settings.MINIMAL_APP_ID, killed_run)
    assert killed_history[-1]["type"] == "executionCompleted" and killed_history[-1]["name"] == "COMPLETED", \
        f"the run killed mid LLM call did not complete in the next make run: {killed_history[-3:]}"
