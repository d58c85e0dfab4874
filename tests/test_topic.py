"""The topic door: one run per published task, dozens of them at once.

A message on `assistant.topic` starts one run, whatever happens to its
deliveries: the run's instance id comes from the CloudEvent (input_guard.py,
OneRunPerMessage), so the same CloudEvent sent again, or handed out again by
Redis after its app died before acknowledging it, finds its run and starts
nothing. And the app acknowledges a message once its run is scheduled, not
when the run is over, so published runs wait on the LLM side by side.

Runs are counted by the instances the sidecar's workflow API lists (a run
is there as soon as it is scheduled, before its message is acknowledged),
by the agent's state in Redis, and by the calls the scripted LLM received
(two per run: the answer, then the summary). The in-process dedupe of dapr-agents (CloudEvent
ids seen in the last 60 s) is emptied by a restart of the service, so what
these tests see is the durable id, not that cache.
"""

from __future__ import annotations

import json
import signal
import uuid

import httpx
import psutil
import pytest

from helpers import TEST_LLM_TIMEOUT, record_figure, wait_for
from tools.runs.workflows import list_instances, sidecar_grpc_port
from tools.stack.settings import SERVICE_APP_ID, SIDECAR_URL

TOPIC, PUBSUB = "assistant.topic", "agent-pubsub"
PUBLISH_URL = f"{SIDECAR_URL}/v1.0/publish/{PUBSUB}/{TOPIC}"
PUBLISHED_AT_ONCE, WAITING_AT_LEAST = 40, 32
# Redis hands out again a message not acknowledged within processingTimeout (60 s as shipped); the tests'
# copy of the resources says 3 s, so a redelivery comes in seconds.
REDELIVERY = '      value: ""\n    - name: processingTimeout\n      value: "3s"\n' \
             '    - name: redeliverInterval\n      value: "1s"\n'


@pytest.fixture(scope="module")
def topic_service(service_session, local_stack):
    """The service with quick redelivery on the topic and the shipped 60 s LLM timeout (held calls must not
    time out), restored afterwards."""
    service = service_session
    pubsub, resiliency = service.resources / "agent-pubsub.yaml", service.resources / "resiliency.yaml"
    suite_pubsub, suite_resiliency = pubsub.read_text(), resiliency.read_text()
    pubsub.write_text(suite_pubsub.replace('      value: ""\n', REDELIVERY, 1))
    resiliency.write_text(suite_resiliency.replace(f"llm: {TEST_LLM_TIMEOUT}", "llm: 60s"))
    service.stop()
    service.start()
    try:
        yield service
    finally:
        pubsub.write_text(suite_pubsub)
        resiliency.write_text(suite_resiliency)
        service.stop()
        service.start()


def _publish(body: dict, content_type: str = "application/json") -> None:
    response = httpx.post(PUBLISH_URL, content=json.dumps(body), headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == 204, response.text


def _cloudevent(event_id: str, task: str) -> dict:
    """A CloudEvent as another Dapr app sends it: the sidecar keeps its id and source."""
    return {"specversion": "1.0", "id": event_id, "source": "another-app", "type": "com.example.task",
            "datacontenttype": "application/json", "data": {"task": task}}


def _runs_of(redis_client, task: str) -> list[str]:
    """The instance ids whose conversation starts with `task` (the agent's state in Redis)."""
    ids = []
    for key in redis_client.scan_iter(match=f"{SERVICE_APP_ID}||assistant:_workflow_*", count=1000):
        data = redis_client.hget(key, "data") or ""
        if task in data and (json.loads(data)["messages"] or [{}])[0].get("content") == task:
            ids.append(key.rsplit("_", 1)[1])
    return ids


def _instances() -> set[str]:
    """Every workflow instance of the service, from its sidecar's workflow API."""
    return set(list_instances(sidecar_grpc_port(SERVICE_APP_ID)))


def _topic_drained(redis_client) -> bool:
    """Every message on the topic has been handed to the service and acknowledged by it."""
    last = redis_client.xinfo_stream(TOPIC)["last-generated-id"]
    group = next(g for g in redis_client.xinfo_groups(TOPIC) if g["name"] == SERVICE_APP_ID)
    return group["last-delivered-id"] == last and group["pending"] == 0


def _calls(scripted_llm, task: str) -> dict[str, int]:
    calls = scripted_llm.calls_mentioning(task)
    return {"answer": sum(not c.is_summary for c in calls), "summary": sum(c.is_summary for c in calls)}


def _wait_until_completed(service, instance_id: str) -> dict:
    status = service.wait_until_done(instance_id, timeout_s=120)
    assert status["runtime_status"] == "COMPLETED", status
    return status


def _log_since_last_start(service) -> str:
    return service.log.read_text(errors="replace").rsplit("===== service start =====", 1)[-1]


def test_the_same_cloudevent_published_twice_runs_once(topic_service, scripted_llm, redis_client):
    task, event_id = scripted_llm.task("Once per CloudEvent"), str(uuid.uuid4())
    before = _instances()
    _publish(_cloudevent(event_id, task), "application/cloudevents+json")
    first = wait_for(lambda: _runs_of(redis_client, task), "the run of the first publish")
    done = _wait_until_completed(topic_service, first[0])
    # A restart empties dapr-agents' cache of CloudEvent ids seen in the last 60 s, as a crash or another
    # replica would; the sidecar also starts a COMPLETED run again if asked to schedule its id.
    topic_service.stop()
    topic_service.start()
    _publish(_cloudevent(event_id, task), "application/cloudevents+json")
    wait_for(lambda: _topic_drained(redis_client), "the second publish to be delivered and acknowledged")

    started = _instances() - before
    assert started == set(first), f"the CloudEvent started {len(started)} runs: {started}"
    again = topic_service.status(first[0])  # not started again from scratch under the same id
    assert (again["runtime_status"], again["created_at"]) == ("COMPLETED", done["created_at"]), \
        f"the finished run was started again under its id: {again['runtime_status']}, created {again['created_at']}"
    assert _calls(scripted_llm, task) == {"answer": 1, "summary": 1}
    assert f"already has its run {first[0]}" in _log_since_last_start(topic_service), \
        "the second delivery was not seen by the service"


def test_a_message_redelivered_after_its_app_was_killed_runs_once(topic_service, scripted_llm, redis_client):
    task = scripted_llm.task("Once after a killed app")
    # Redis refuses the sidecar's acknowledgement (XACK), so the message stays pending as if the app had died
    # between scheduling its run and acknowledging it; then the app is killed.
    before = _instances()
    redis_client.execute_command("ACL", "SETUSER", "default", "-xack")
    try:
        scripted_llm.hold()
        _publish({"task": task})  # the README's curl: plain JSON, the sidecar wraps it with a fresh id
        wait_for(lambda: _calls(scripted_llm, task)["answer"], "the run's LLM call to arrive", timeout_s=30)
        pending = redis_client.xpending(TOPIC, SERVICE_APP_ID)["pending"]
        assert pending >= 1, "the message was acknowledged: this test needs it pending"
        app, daprd = topic_service.processes()
        app.send_signal(signal.SIGKILL)
        psutil.wait_procs([app, daprd], timeout=30)
        topic_service.stop()
    finally:
        redis_client.execute_command("ACL", "SETUSER", "default", "+xack")
    topic_service.start()
    scripted_llm.release()
    wait_for(lambda: _topic_drained(redis_client), "the redelivered message to be acknowledged", timeout_s=120)
    runs = sorted(_instances() - before)
    assert len(runs) == 1, f"the message started {len(runs)} runs: {runs}"
    assert _runs_of(redis_client, task) == runs
    _wait_until_completed(topic_service, runs[0])
    log = _log_since_last_start(topic_service)
    # Either the app was handed the message again and found its run, or (Dapr 1.18.2, seen once in CI) the
    # restarted sidecar read it while the app's subscription stream was reconnecting and dropped it as
    # "no streamer subscribed" (docs/upstream.md). Runs once either way; anything else is unexplained.
    assert f"already has its run {runs[0]}" in log or "no streamer subscribed" in log, \
        "the message was neither handed out again after the restart nor dropped by the sidecar"
    # The killed attempt's LLM call ran again after the restart (activities are at least once); the run
    # reached its summary once.
    assert _calls(scripted_llm, task)["summary"] == 1, _calls(scripted_llm, task)


def test_dozens_of_published_tasks_wait_on_the_llm_together(topic_service, scripted_llm, redis_client):
    marker = scripted_llm.task("topic concurrency")
    tasks = [f"{marker} [{i}]" for i in range(PUBLISHED_AT_ONCE)]
    scripted_llm.hold()
    try:
        for task in tasks:
            _publish({"task": task})
        wait_for(lambda: scripted_llm.in_flight >= WAITING_AT_LEAST,
                 lambda: f"{WAITING_AT_LEAST} topic runs waiting on the LLM at once ({scripted_llm.in_flight} were)",
                 timeout_s=90, interval_s=0.2)
        held_at_once = scripted_llm.in_flight
        held = scripted_llm.calls_mentioning(marker)
        assert len({str(c.messages[-1].get("content")) for c in held}) == len(held)  # each its own task
    finally:
        scripted_llm.release()
    wait_for(lambda: all(_calls(scripted_llm, t)["summary"] for t in tasks), "every published run to finish",
             timeout_s=180, interval_s=1)
    assert {t: n for t in tasks if (n := len(_runs_of(redis_client, t))) != 1} == {}
    record_figure("tasks published at once with the LLM held", published=PUBLISHED_AT_ONCE,
                  llm_calls_held_at_once=held_at_once)


def test_a_published_task_whose_cloudevent_has_a_numeric_traceid_runs_once(topic_service, scripted_llm, redis_client):
    # Another client of the topic may write a number where CloudEvents says string. dapr-agents read that
    # envelope in every delivery, failed, and asked Redis for the message again, forever: the task never ran.
    task = scripted_llm.task("A number for a trace id")
    before = _instances()
    _publish(_cloudevent(str(uuid.uuid4()), task) | {"traceid": 4242}, "application/cloudevents+json")

    runs = wait_for(lambda: _runs_of(redis_client, task), "the run of the task with a numeric traceid")
    _wait_until_completed(topic_service, runs[0])
    wait_for(lambda: _topic_drained(redis_client), "the message to be acknowledged")
    assert _instances() - before == set(runs) and len(runs) == 1, f"{len(runs)} runs: {runs}"
    assert _calls(scripted_llm, task) == {"answer": 1, "summary": 1}
    assert "CloudEvent fields that are not strings, left out: traceid=4242.0" in _log_since_last_start(topic_service)
