"""Bad input gets a clear answer, starts no run, and stalls nothing.

A corpus of malformed requests to `POST /run`, the status route and the
pub/sub topic. input_guard.py checks every task before a run starts: `POST
/run` answers 4xx naming the problem (413 over the task limit), and a bad
message on the topic is dropped with a log line saying why. A task at the
limit completes and leaves other runs alone. Cases marked `known_limitation`
pin what dapr-agents 1.0.9 still does, so docs/durability.md stays true.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from helpers import wait_for
from input_guard import MAX_TASK_BYTES
from tools.runs.workflows import list_instances, sidecar_grpc_port
from tools.stack.settings import LOG_DIR, ROOT, SERVICE_APP_ID, SERVICE_URL, SIDECAR_URL

JSON = {"Content-Type": "application/json"}
LIMIT = f"{MAX_TASK_BYTES // 1024} KiB"


def task_of(size: int, fill: bytes = b"a") -> bytes:
    """A JSON body whose task is `size` bytes long."""
    return b'{"task": "' + fill * size + b'"}'


@dataclass
class Case:
    name: str
    body: bytes | None
    headers: dict = field(default_factory=lambda: dict(JSON))
    status: int = 422
    says: str = "?"                # words the error must contain; "" only for accepted input
    run_ends: str | None = None    # for accepted input: how its run ends


RUN_CASES = [
    Case("not JSON", b"not json", status=400, says="not valid JSON"),
    Case("truncated JSON", b'{"task": "unfinished', status=400, says="not valid JSON"),
    Case("invalid UTF-8", b'{"task": "\xff\xfe"}', status=400, says="not valid JSON"),
    Case("a number out of range", b'{"task": 1e999999}', status=400, says="out of range"),
    Case("NaN", b'{"task": NaN}', status=400, says="JSON does not allow"),
    Case("no body", None, status=400, says="the body is empty"),
    Case("a blank body", b"  ", status=400, says="the body is empty"),
    Case("deep nesting", b"[" * 100_000 + b"]" * 100_000, status=400, says="nests too deeply"),
    Case("a JSON array", b'["Write a haiku"]', says="send a JSON object with a task field, not an array"),
    Case("a JSON string", b'"Write a haiku"', says="send a JSON object with a task field, not a string"),
    Case("a JSON number", b"42", says="send a JSON object with a task field, not a number"),
    Case("JSON null", b"null", says="send a JSON object with a task field, not null"),
    Case("an empty object", b"{}", says="the object has no task field"),
    Case("no task field", b'{"prompt": "haiku"}', says="the object has no task field"),
    Case("an empty task", b'{"task": ""}', says="the task is empty"),
    Case("a blank task", b'{"task": "   "}', says="the task is empty"),
    Case("task is a number", b'{"task": 5}', says="the task must be a string, not a number"),
    Case("task is null", b'{"task": null}', says="the task must be a string, not null"),
    Case("task is an object", b'{"task": {"text": "haiku"}}', says="the task must be a string, not an object"),
    Case("task is a list", b'{"task": ["haiku"]}', says="the task must be a string, not an array"),
    Case("task is a boolean", b'{"task": true}', says="the task must be a string, not a boolean"),
    # Past the guard, dapr-agents' route wants a JSON object of strings.
    Case("a nested non-string field", b'{"task": "haiku", "options": {"n": 1}}', says="Input should be a valid string"),
    Case("text/plain content type", b'{"task": "haiku"}', headers={"Content-Type": "text/plain"},
         says="Input should be a valid dictionary"),
    Case("no content type", b'{"task": "haiku"}', headers={}, says="Input should be a valid dictionary"),
    Case("an unknown string field beside the task", b'{"task": "haiku", "tone": "dry"}', status=200, says="",
         run_ends="COMPLETED"),
    Case("a 100 kB task", task_of(100_000, b"b"), status=200, says="", run_ends="COMPLETED"),
    Case("a task one byte over the limit", task_of(MAX_TASK_BYTES + 1), status=413,
         says=f"the limit is {MAX_TASK_BYTES} bytes"),
    Case("a 3 MB task (accepted before the guard; its run could never be scheduled)", task_of(3_000_000),
         status=413, says=LIMIT),
    Case("a 20 MB task", task_of(20_000_000), status=413, says=LIMIT),
]


def _send(method: str, url: str, **kwargs) -> httpx.Response:
    """One request on its own connection: after a malformed request the server
    may close the connection, and a pooled one would then fail the next case."""
    with httpx.Client(timeout=60) as client:
        return client.request(method, url, **kwargs)


def _failure_reason(status: dict) -> str:
    return (status.get("failure_details") or {}).get("message", "")


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.name for c in RUN_CASES])
def test_post_run_answers_malformed_input_clearly_and_starts_no_run(service, scripted_llm, case: Case):
    before = set(list_instances(sidecar_grpc_port(SERVICE_APP_ID)))

    response = _send("POST", f"{SERVICE_URL}/run", content=case.body, headers=case.headers)

    assert response.status_code == case.status, response.text[:500]
    assert case.says in response.text
    if case.run_ends:
        status = service.wait_until_done(response.json()["instance_id"])
        assert status["runtime_status"] == case.run_ends, status
    else:
        assert set(list_instances(sidecar_grpc_port(SERVICE_APP_ID))) == before  # no run started
    assert service.http.get("/openapi.json").status_code == 200  # still serving


def test_a_task_at_the_limit_and_a_long_answer_complete_and_stall_no_other_run(service, scripted_llm):
    # dapr-agents prints each task and answer; `dapr run` stops reading the app's output at a line over
    # 64 KiB, and the app then blocks on its next print: input_guard folds long lines so that it cannot.
    task = scripted_llm.task("At the limit") + " " + "c" * (MAX_TASK_BYTES - 64)
    scripted_llm.answer_when("At the limit", "Done with the long one")
    long_answer = scripted_llm.task("A long answer")
    scripted_llm.answer_when(long_answer, "d" * 300_000)
    big, chatty = service.start_run(task), service.start_run(long_answer)

    for i in range(3):  # runs after them still complete
        assert service.wait_until_done(service.start_run(scripted_llm.task(f"A short task {i}")))["runtime_status"] == \
            "COMPLETED"
    assert service.wait_until_done(big, timeout_s=120)["runtime_status"] == "COMPLETED"
    assert service.wait_until_done(chatty, timeout_s=120)["runtime_status"] == "COMPLETED"


STATUS_CASES = [
    ("an unknown instance id", f"/run/{uuid.uuid4().hex}", 404, "Workflow instance not found."),
    ("a 5000-character id", "/run/" + "x" * 5000, 404, "Workflow instance not found."),
    ("a path-traversal id", "/run/..%2F..%2Fetc%2Fpasswd", 404, "Not Found"),
    ("the run route with GET", "/run", 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("name,path,status,says", STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
def test_the_status_route_answers_odd_requests_clearly(service, name, path, status, says):
    response = _send("GET", f"{SERVICE_URL}{path}")

    assert response.status_code == status
    assert says in response.text


@pytest.mark.known_limitation
def test_known_limitation_terminating_an_unknown_run_is_a_500(service):
    response = _send("POST", f"{SERVICE_URL}/run/{uuid.uuid4().hex}/terminate")

    assert response.status_code == 500
    assert service.http.get("/openapi.json").status_code == 200


PUBSUB_CASES = [
    ("not JSON", b"not json", JSON),
    ("a JSON array", b'["haiku"]', JSON),
    ("a JSON string", b'"haiku"', JSON),
    ("JSON null", b"null", JSON),
    ("an empty object", b"{}", JSON),
    ("an empty task", b'{"task": ""}', JSON),
    ("task is a number", b'{"task": 5}', JSON),
    ("a number out of range", b'{"task": 1e999999}', JSON),
    ("task is an object", b'{"task": {"text": "haiku"}}', JSON),
    ("no task field", b'{"prompt": "haiku"}', JSON),
    ("invalid UTF-8", b'{"task": "\xff\xfe"}', JSON),
    ("plain text", b"Write a haiku", {"Content-Type": "text/plain"}),
    ("a CloudEvent without data", b'{"specversion": "1.0", "type": "x", "source": "y", "id": "z"}',
     {"Content-Type": "application/cloudevents+json"}),
    ("CloudEvent data that is a list", b'{"specversion": "1.0", "type": "x", "source": "y", "id": "w", '
     b'"datacontenttype": "application/json", "data": ["haiku"]}', {"Content-Type": "application/cloudevents+json"}),
    ("a task one byte over the limit", task_of(MAX_TASK_BYTES + 1), JSON),
    ("a 3 MB task (accepted before the guard; its run could never be scheduled)", task_of(3_000_000), JSON),
]
PUBLISH = f"{SIDECAR_URL}/v1.0/publish/agent-pubsub/assistant.topic"


def test_malformed_messages_on_the_topic_start_no_run_and_block_no_later_message(service, scripted_llm):
    grpc_port = sidecar_grpc_port(SERVICE_APP_ID)
    before = set(list_instances(grpc_port))

    for name, body, headers in PUBSUB_CASES:
        response = _send("POST", PUBLISH, content=body, headers=headers)
        assert response.status_code == 204, f"{name}: {response.status_code} {response.text}"
    # Over its 4 MiB message limit, the sidecar itself refuses, with a status.
    too_big = _send("POST", PUBLISH, content=task_of(5_000_000), headers=JSON)
    assert too_big.status_code == 500 and "stream too large" in too_big.text
    good_task = scripted_llm.task("A good task after bad ones")
    scripted_llm.answer_when(good_task, "Still listening")
    assert service.sidecar.post("/v1.0/publish/agent-pubsub/assistant.topic",
                                json={"task": good_task}).status_code == 204

    wait_for(lambda: scripted_llm.calls_mentioning(good_task), "the good message to reach the agent")
    new_runs = set(list_instances(grpc_port)) - before
    assert len(new_runs) == 1, "only the good message may start a run"
    assert service.wait_until_done(new_runs.pop())["runtime_status"] == "COMPLETED"
    log = (LOG_DIR / "service.log").read_text(errors="replace")
    assert f"the task is {MAX_TASK_BYTES + 1} bytes; the limit is {MAX_TASK_BYTES} bytes" in log
    assert "dropped a message on the agent's topic: the object has no task field" in log
    assert service.http.get("/openapi.json").status_code == 200


def test_after_the_corpus_a_normal_task_still_completes(service, scripted_llm):
    scripted_llm.answer_next("Unbothered")
    instance_id = service.start_run(scripted_llm.task("Write a haiku about resilience."))
    assert service.wait_until_done(instance_id)["runtime_status"] == "COMPLETED"


def test_make_purge_removes_one_stuck_run_and_leaves_the_others(service, scripted_llm, redis_client):
    kept = service.start_run(scripted_llm.task("A run to keep"))
    assert service.wait_until_done(kept)["runtime_status"] == "COMPLETED"
    stuck_task = scripted_llm.task("A run stuck at the LLM")
    scripted_llm.hold()
    stuck = service.start_run(stuck_task)
    wait_for(lambda: scripted_llm.calls_mentioning(stuck_task), "the stuck run to reach the LLM")

    try:
        result = subprocess.run(["make", "-s", "purge", f"ID={stuck}"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)

        assert result.returncode == 0, result.stdout + result.stderr
        assert f"run {stuck}: purged" in result.stdout
        assert service.http.get(f"/run/{stuck}").status_code == 404
        assert redis_client.exists(f"{SERVICE_APP_ID}||assistant:_workflow_{stuck}") == 0
        assert service.status(kept)["runtime_status"] == "COMPLETED"
        assert redis_client.exists(f"{SERVICE_APP_ID}||assistant:_workflow_{kept}") == 1
    finally:
        scripted_llm.release()
