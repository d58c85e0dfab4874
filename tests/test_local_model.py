"""`LLM=local`: the agent against a real model on this machine, SmolLM2-135M served by Ollama
(scripts/install-local-model.sh, docs/local-model.md), through the same `conversation.openai`
component as any OpenAI-compatible server. The scripted LLM stays for every test that needs
exact answers, faults or timing; here the answers are the model's own, so the tests assert on
what temperature 0 makes deterministic (the same task, the same answer) and on the run's shape.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from helpers import env_without_llm_settings, record_figure, wait_for
from tools.bench.local_model import DOC, GIN_LINE, TOPICS, render_doc
from tools.stack import commands as stack
from tools.stack.llm import choose_llm
from tools.stack.processes import recorded, stop_dapr_run
from tools.stack.settings import LOCAL_MODEL_LABEL, LOG_DIR, ROOT, SERVICE_APP_ID, local_model_installed

MODEL_LOG = LOG_DIR / "local-model.log"
SERVICE_LOG = LOG_DIR / "service-local-model.log"
RUN_TIMEOUT_S = 300  # a cold model server and two answers on 2 busy cores
HAIKU = "Write a haiku about programming."
SUMMARY_RUNS = 8



@pytest.fixture(scope="module")
def local_model_set_up() -> None:
    """`make test` installs it first; a bare pytest says how, rather than skip a claim silently."""
    if not local_model_installed():
        pytest.fail("the local model is not set up: run `bash scripts/install-local-model.sh` (`make test` does)")


def model_calls() -> int:
    """Chat completions the model server answered since it started (its log is new at each start)."""
    return sum(1 for code, *_ in GIN_LINE.findall(MODEL_LOG.read_text(errors="replace")) if code == "200")


def looks_echoed(answer: str, task: str) -> bool:
    """What Dapr's echo would have answered: the prompt it was sent (system prompt, then the task)."""
    return answer.strip().endswith(task) or answer.lstrip().startswith("# Today's date")


@pytest.fixture(scope="module")
def one_shot(local_model_set_up, local_stack) -> subprocess.CompletedProcess:
    """`make run LLM=local` after set-up: it starts the model server itself and stops it at the end."""
    assert recorded("local-model") is None, "a model server runs already: this test wants `make run` to start it"
    return subprocess.run([sys.executable, "-m", "tools.stack", "run", "--llm", "local"], cwd=ROOT,
                          env=env_without_llm_settings(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def test_make_run_llm_local_prints_the_models_answer(one_shot):
    assert one_shot.returncode == 0, one_shot.stdout[-3000:] + one_shot.stderr[-3000:]
    assert f"LLM: {LOCAL_MODEL_LABEL} on this machine" in one_shot.stdout
    lines = [line.removeprefix("== APP == ") for line in one_shot.stdout.splitlines()
             if line.startswith("== APP == {")]
    assert lines, f"no answer printed:\n{one_shot.stdout[-3000:]}"
    answer = json.loads(lines[-1])
    assert answer["role"] == "assistant" and answer["name"] == "Assistant"
    assert answer["content"].strip() and not looks_echoed(answer["content"], HAIKU), answer["content"]
    # The model itself answered: the run's two calls (the answer, then the memory summary) are in its log.
    assert model_calls() == 2, MODEL_LOG.read_text()[-2000:]
    assert " COMPLETED in " in one_shot.stdout.strip().splitlines()[-1]
    # The run started the model server, so it stopped it too.
    assert recorded("local-model") is None


@pytest.fixture(scope="module")
def local_service(local_stack, one_shot):
    """The service (the README's `dapr run`) with LLM=local, in place of the session's scripted one."""
    stop_dapr_run("service")  # the session's service holds the ports; its fixture starts it again when needed
    env = env_without_llm_settings()
    with stack.running(local_model=True) as runtime:
        argv, env = stack.dapr_run(runtime, stack.SERVICE_APP, choose_llm(env, "local"), base_env=env)
        stack.start_service(argv, env, SERVICE_LOG)
        client = httpx.Client(base_url=stack.SERVICE_URL, timeout=30)
        try:
            yield client
        finally:
            client.close()
            stop_dapr_run("service")


def run_to_completion(client, task: str) -> tuple[str, dict]:
    response = client.post("/run", json={"task": task})
    assert response.status_code == 200, response.text
    instance_id = response.json()["instance_id"]

    def done():
        status = client.get(f"/run/{instance_id}")
        body = status.json() if status.status_code == 200 else {}
        return body if body.get("runtime_status") in {"COMPLETED", "FAILED", "TERMINATED"} else None

    return instance_id, wait_for(done, f"run {instance_id} to finish", RUN_TIMEOUT_S, interval_s=0.5)


def test_a_service_run_completes_with_the_models_answer_and_the_same_task_gets_the_same_answer(local_service):
    calls_before = model_calls()

    _, first = run_to_completion(local_service, HAIKU)
    _, second = run_to_completion(local_service, HAIKU)

    assert first["runtime_status"] == second["runtime_status"] == "COMPLETED"
    answer = json.loads(first["serialized_output"])["content"]
    assert answer.strip() and not looks_echoed(answer, HAIKU), answer
    # Temperature 0 (the component sends it) and the Modelfile's seed: one task, one answer.
    assert json.loads(second["serialized_output"])["content"] == answer
    assert model_calls() - calls_before == 4  # per run: the answer and the memory summary


def test_each_run_stores_the_models_memory_summary_or_logs_why_not(local_service, redis_client):
    """How often SmolLM2-135M returns the JSON summary dapr-agents asks for (a json_schema response_format,
    which Ollama enforces with a grammar), and what the agent does when it does not: the run completes
    all the same and dapr-agents logs "LLM summarize failed" (agents/base.py, best effort)."""
    runs = []
    for topic in TOPICS[:SUMMARY_RUNS]:
        # The same tasks each time (runs are told apart by their ids), so the outcome is that of fixed prompts.
        instance_id, status = run_to_completion(local_service, f"Write a haiku about {topic}.")
        runs.append((instance_id, status))

    stored, skipped = [], []
    log = SERVICE_LOG.read_text(errors="replace")
    for instance_id, status in runs:
        assert status["runtime_status"] == "COMPLETED", status
        memory = redis_client.hget(f"{SERVICE_APP_ID}||assistant:_memory_{instance_id}", "data")
        if memory:
            summary = json.loads(memory)[0]
            assert summary["role"] == "assistant" and summary["content"].strip()
            stored.append(instance_id)
        else:
            assert f"LLM summarize failed for instance_id={instance_id}" in log or \
                f"empty summary for instance_id={instance_id}" in log, f"run {instance_id}: no summary, no reason"
            skipped.append(instance_id)
    record_figure("test_local_model", json_summary_stored=f"{len(stored)} of {SUMMARY_RUNS}")
    # Ollama's grammar holds the model to the JSON asked for; only a summary cut at the answer cap
    # (LOCAL_MODEL_MAX_TOKENS) can come back invalid. Every run so far stored its summary.
    assert len(stored) >= SUMMARY_RUNS - 2, f"summaries stored for {len(stored)} of {SUMMARY_RUNS} runs"


def test_the_figures_in_docs_local_model_are_those_of_the_results_files():
    """Typed by no one: `python -m tools.bench.local_model doc` writes them from bench/results/local-model*.json."""
    assert render_doc() in DOC.read_text(), "docs/local-model.md is out of date: python -m tools.bench.local_model doc"
