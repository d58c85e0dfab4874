"""`make run`: the stack, durable_agent_minimal.py under the README's
`dapr run`, the answer on screen, and nothing left running."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import psutil

from helpers import env_without_llm_settings, processes_mentioning
from tools.stack import processes, settings

RUN_TIMEOUT_S = 180
# durable_agent_minimal.py's task; a test that runs it claims the text, so the calls that mention it are its runs'.
ONE_SHOT_TASK = "Write a haiku about programming."


def make_run(env: dict[str, str]) -> subprocess.CompletedProcess:
    """What `make run` does after set-up."""
    return subprocess.run([sys.executable, "-m", "tools.stack", "run"], cwd=settings.ROOT, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def printed_answer(stdout: str) -> dict:
    """The JSON line durable_agent_minimal.py prints last: the workflow's output."""
    lines = [line.removeprefix("== APP == ") for line in stdout.splitlines() if line.startswith("== APP == {")]
    assert lines, f"no answer printed:\n{stdout[-3000:]}"
    return json.loads(lines[-1])


def minimal_app_processes() -> list[psutil.Process]:
    return processes_mentioning("durable-agent-minimal", "durable_agent_minimal.py")


def test_make_run_prints_the_answer_of_the_configured_llm(local_stack, llm_env, scripted_llm):
    scripted_llm.claim(ONE_SHOT_TASK)
    scripted_llm.answer_when(ONE_SHOT_TASK, "Semicolons rest\nwhere the compiler once sang;\nthe build is green now.")

    result = make_run(llm_env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"LLM: OpenAI-compatible endpoint {scripted_llm.endpoint}" in result.stdout
    answer = printed_answer(result.stdout)
    assert answer["role"] == "assistant" and answer["name"] == "Assistant"
    assert answer["content"] == "Semicolons rest\nwhere the compiler once sang;\nthe build is green now."
    assert scripted_llm.task_calls()[0].messages[-1]["content"] == ONE_SHOT_TASK
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\[stack\] run [0-9a-f]{32} COMPLETED in [0-9.]+ s; answer: \"Semicolons rest / where the "
                        r"compiler once sang; / the build is green now\.\"; its history: make history ID=[0-9a-f]{32} "
                        r"APP=durable-agent-minimal \(full output: \.stack/logs/run\.log\)", summary), summary
    assert minimal_app_processes() == []


def test_make_run_without_an_llm_uses_dapr_echo_and_says_so(local_stack, scripted_llm):
    scripted_llm.claim(ONE_SHOT_TASK)  # had the run reached the scripted LLM, its calls would be logged here

    result = make_run(env_without_llm_settings())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "conversation.echo" in result.stdout and "ECHOES your prompt" in result.stdout
    # Echo answers with the text it was sent, so the prompt comes back.
    assert printed_answer(result.stdout)["content"].endswith(ONE_SHOT_TASK)
    # Echo cannot write the memory summary; dapr-agents' traceback for it is folded into one line.
    assert "Traceback" not in result.stdout + result.stderr
    assert "echo cannot write the JSON memory summary" in result.stdout
    assert "Traceback" in (settings.LOG_DIR / "run.log").read_text()  # kept, in full, in the log
    assert " COMPLETED in " in result.stdout.strip().splitlines()[-1]
    assert scripted_llm.calls == []
    assert minimal_app_processes() == []


def test_make_run_leaves_a_stack_it_did_not_start_running(local_stack, llm_env):
    assert make_run(llm_env).returncode == 0

    for name in ("redis", "placement", "scheduler"):
        assert processes.recorded(name) is not None, f"{name} was stopped by a run that did not start it"
