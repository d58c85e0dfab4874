"""Each capability the README claims, proven on the running service.

Every test here fails if its capability is switched off (`make switch-offs`
shows it, one copy of the repository per switch-off: tools/proof/switch_offs.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid

import httpx
import redis

from helpers import TEST_LLM_TIMEOUT, published_run, wait_for
from tools.bench.run import metric_total
from tools.runs.workflows import history, sidecar_grpc_port
from tools.stack import settings
from tools.stack.settings import SERVICE_APP_ID

ZIPKIN = f"http://127.0.0.1:{settings.ZIPKIN_PORT}"
METRICS = "http://127.0.0.1:9090/metrics"
LLM_COMPONENT = "llm-provider"


def completed_run(service, scripted_llm, answer: str = "A haiku, as you asked") -> str:
    scripted_llm.answer_next(answer)
    instance_id = service.start_run(scripted_llm.task("Write a haiku about claims"))
    status = service.wait_until_done(instance_id)
    assert status["runtime_status"] == "COMPLETED", status
    return instance_id


# -- observability -------------------------------------------------------------
def test_a_run_is_traced_in_zipkin_from_the_workflow_down_to_each_llm_call(service, scripted_llm):
    instance_id = completed_run(service, scripted_llm)

    def trace_of_run():
        response = httpx.get(f"{ZIPKIN}/api/v2/traces", params={
            "serviceName": SERVICE_APP_ID, "limit": 20,
            "annotationQuery": f"durabletask.task.instance_id={instance_id}"})
        traces = [t for t in response.json() if any(s["name"].startswith("orchestration||") for s in t)]
        return traces[0] if traces else None

    # The sidecar sends its spans in batches, a few seconds apart; 30 s is several batches.
    spans = wait_for(trace_of_run, f"a trace of run {instance_id} in Zipkin (the sidecar sent none)",
                     timeout_s=30, interval_s=0.5)
    names = [span["name"] for span in spans]
    workflow = next(s for s in spans if s["name"] == "orchestration||dapr.agents.assistant.workflow")
    assert workflow["tags"]["durabletask.runtime_status"] == "COMPLETED"
    assert workflow["localEndpoint"]["serviceName"] == SERVICE_APP_ID
    assert {"activity||dapr.agents.assistant.call_llm", "activity||dapr.agents.assistant.summarize"} <= set(names)
    llm_calls = [s for s in spans if s["name"] == "/dapr.proto.runtime.v1.dapr/conversealpha2"]
    assert len(llm_calls) == 2 and all(s["tags"]["rpc.system"] == "llm-provider" for s in llm_calls)
    assert any(s["tags"].get("db.name") == "agent-workflow" for s in spans)  # state writes, in the same trace


def test_the_sidecar_exports_prometheus_metrics_that_move_with_each_run(service, scripted_llm):
    before = httpx.get(METRICS).text
    completed_run(service, scripted_llm)
    after = httpx.get(METRICS).text

    assert "# TYPE dapr_runtime_workflow_execution_count counter" in after
    runs = ("dapr_runtime_workflow_execution_count", {"app_id": SERVICE_APP_ID, "status": "success"})
    llm = ("dapr_component_conversation_count", {"component": "llm-provider", "success": "true"})
    state = ("dapr_component_state_count", {"component": "agent-workflow", "success": "true"})
    assert metric_total(after, runs[0], **runs[1]) - metric_total(before, runs[0], **runs[1]) == 1
    assert metric_total(after, llm[0], **llm[1]) - metric_total(before, llm[0], **llm[1]) == 2
    assert metric_total(after, state[0], **state[1]) > metric_total(before, state[0], **state[1])
    rpcs = "dapr_grpc_io_server_completed_rpcs"
    assert metric_total(after, rpcs) > metric_total(before, rpcs)


def test_api_logging_records_the_state_pubsub_workflow_and_llm_calls_of_a_run(service, scripted_llm, redis_client):
    offset = service.log.stat().st_size
    completed_run(service, scripted_llm)
    published = scripted_llm.task("logged")
    assert service.sidecar.post("/v1.0/publish/agent-pubsub/assistant.topic",
                                json={"task": published}).status_code == 204

    def logged_methods():
        text = service.log.read_bytes()[offset:].decode(errors="replace")
        methods = {quoted or bare for quoted, bare in re.findall(r'API Called".*? method=(?:"([^"]+)"|(\S+))', text)}
        return methods if "POST /v1.0/publish/agent-pubsub/assistant.topic" in methods else None

    methods = wait_for(logged_methods, "the publish in the API log", timeout_s=10)
    for expected in ("/dapr.proto.runtime.v1.Dapr/ConverseAlpha2",      # the LLM
                     "/dapr.proto.runtime.v1.Dapr/SaveState",           # conversation and agent state
                     "/dapr.proto.runtime.v1.Dapr/GetState",
                     "/TaskHubSidecarService/StartInstance",            # the workflow
                     "/TaskHubSidecarService/CompleteActivityTask",
                     "POST /v1.0/publish/agent-pubsub/assistant.topic"):  # pub/sub
        assert expected in methods, f"{expected} not in the API log: {sorted(methods)}"
    # The published task's run is this test's: it ends here, not in a later test.
    assert service.wait_until_done(published_run(redis_client, published))["runtime_status"] == "COMPLETED"


# -- secrets and configuration ----------------------------------------------------
def test_the_llm_key_comes_from_the_secret_store_and_is_written_nowhere(service, scripted_llm, llm_env, redis_client):
    key = llm_env["OPENAI_API_KEY"]
    completed_run(service, scripted_llm)

    assert service.sidecar.get("/v1.0/secrets/agent-secretstore/API_KEY").json() == {"API_KEY": key}
    # The component sent the LLM exactly the key the secret store holds, on every call.
    assert {call.authorization for call in scripted_llm.calls} == {f"Bearer {key}"}
    # The agent's start-up bulk read sees only OPENAI_* variables, not the environment.
    assert set(service.sidecar.get("/v1.0/secrets/agent-secretstore/bulk").json()) == {"API_KEY", "BASE_URL", "MODEL"}
    written = [p for p in settings.ROOT.rglob("*.yaml") if ".venv" not in p.parts and key in p.read_text()]
    assert written == []
    assert key not in service.log.read_text(errors="replace")
    raw = redis.Redis(port=settings.REDIS_PORT)  # values include binary workflow history
    for redis_key in raw.scan_iter(count=1000):
        if raw.type(redis_key) == b"hash":
            assert not any(key.encode() in value for value in raw.hgetall(redis_key).values()), redis_key
    raw.close()


def test_a_system_prompt_set_in_the_configuration_store_reaches_the_running_agent(service, scripted_llm, redis_client):
    original, new = "You are a helpful assistant", f"You answer in French ({uuid.uuid4().hex[:6]})."
    registry_key = f"{SERVICE_APP_ID}||agents:default:Assistant"

    def registered_prompt() -> str:
        return json.loads(redis_client.hget(registry_key, "data") or "{}").get("agent", {}).get("system_prompt", "")

    try:
        redis_client.set("agent_system_prompt", new)
        assert service.sidecar.get("/v1.0/configuration/agent-config",
                                   params={"key": "agent_system_prompt"}).json() == {
            "agent_system_prompt": {"value": new}}
        # The agent's subscription applies it and re-registers itself with it.
        wait_for(lambda: registered_prompt() == new, "the agent to apply the new system prompt", timeout_s=15)
        completed_run(service, scripted_llm)
        assert scripted_llm.task_calls()[-1].messages[0] == {"role": "system", "content": new}
    finally:
        redis_client.set("agent_system_prompt", original)
        wait_for(lambda: registered_prompt() == original, "the original system prompt to come back", timeout_s=15)


# -- resiliency ----------------------------------------------------------------------
def test_llm_errors_are_retried_by_the_sidecar_and_the_run_completes(service, scripted_llm):
    scripted_llm.fail_next(500, 429)

    instance_id = completed_run(service, scripted_llm, answer="Third time lucky")

    statuses = [call.answered_status for call in scripted_llm.task_calls()]
    assert statuses == [500, 429, 200]
    # The sidecar retried inside one activity: dapr-agents never saw a failure
    # (without the policy it would retry the whole activity: taskFailed events).
    events = history(instance_id, sidecar_grpc_port(SERVICE_APP_ID))
    call_llm = [e["type"] for e in events if e["name"].endswith(".call_llm")]
    assert call_llm == ["taskScheduled", "taskCompleted"]


def _converse(service, text: str) -> httpx.Response:
    """One call to the LLM through the sidecar's Conversation API, as the agent makes it (alpha2)."""
    return service.sidecar.post(f"/v1.0-alpha2/conversation/{LLM_COMPONENT}/converse", json={
        "inputs": [{"messages": [{"ofUser": {"content": [{"text": text}]}}]}]})


def test_a_hanging_llm_is_cut_by_the_timeout_and_the_run_fails_with_a_reason(service, scripted_llm):
    scripted_llm.hold()
    try:
        instance_id = service.start_run(scripted_llm.task("This answer never comes"))
        # The policy's timeout (`llm:` in resources/resiliency.yaml; TEST_LLM_TIMEOUT in the tests' copy) cuts
        # the first held call, and the retry policy asks again: a second call arrives while the first is held.
        wait_for(lambda: len(scripted_llm.task_calls()) >= 2,
                 f"the LLM policy's timeout ({TEST_LLM_TIMEOUT}) to cut the held call (and the retry to ask again)",
                 timeout_s=120, interval_s=1)
        status = service.wait_until_done(instance_id, timeout_s=240)
        held_calls = [call.answered_status for call in scripted_llm.task_calls()]
        # Right after, the LLM still hangs, but a call does not reach it: the open breaker refuses it at once.
        reached_before, asked_at = len(scripted_llm.calls), time.monotonic()
        refused = _converse(service, scripted_llm.task("Are you there?"))
        refused_after_s, reached = time.monotonic() - asked_at, len(scripted_llm.calls) - reached_before
    finally:
        scripted_llm.release()

    assert status["runtime_status"] == "FAILED"
    reason = status["failure_details"]["message"]
    assert "failed conversing with component llm-provider" in reason, reason
    # The timed-out attempts tripped the breaker (5 failures in a row); the last attempts met it open.
    assert "circuit breaker is open" in reason, reason
    # Each call that did reach the LLM was cut by the policy's timeout (none was answered).
    assert len(held_calls) >= 5 and set(held_calls) == {0}, held_calls
    assert refused.status_code == 500 and "circuit breaker is open" in refused.text, refused.text
    assert reached == 0 and refused_after_s < 1, (reached, refused_after_s)
    # After its 30 s the breaker lets one call through; it succeeds, the circuit closes, runs complete.
    wait_for(lambda: _converse(service, scripted_llm.task("Are you back?")).status_code == 200,
             "the LLM circuit to close again", timeout_s=60, interval_s=1)
    completed_run(service, scripted_llm)


# -- inspecting runs without Docker ------------------------------------------------------
def test_workflow_runs_are_listed_and_their_history_shown_without_docker(service, scripted_llm, local_stack,
                                                                       redis_client):
    instance_id = completed_run(service, scripted_llm)
    # Durable: the workflow engine wrote the run's history to Redis, where a restarted sidecar reads it back.
    history_keys = list(redis_client.scan_iter(match=f"*||{instance_id}||history-*", count=1000))
    assert history_keys, f"no history of run {instance_id} in Redis: the workflow state is not in a durable store"

    listed = subprocess.run(
        ["dapr", "workflow", "list", "--app-id", SERVICE_APP_ID, "-c", "redis://127.0.0.1:6379"],
        env=local_stack.env(), capture_output=True, text=True, timeout=60)
    history = subprocess.run([sys.executable, "-m", "tools.runs.workflows", "history", instance_id],
                             cwd=settings.ROOT, capture_output=True, text=True, timeout=60)

    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"{instance_id}\s+COMPLETED", listed.stdout), listed.stdout
    assert history.returncode == 0, history.stderr
    for step in ("executionStarted", "dapr.agents.Assistant.call_llm", "dapr.agents.Assistant.summarize",
                 "dapr.agents.Assistant.finalize_workflow", "executionCompleted       COMPLETED"):
        assert step in history.stdout, history.stdout


def test_the_keys_a_run_created_can_be_listed_and_read_with_redis_cli(service, scripted_llm):
    instance_id = completed_run(service, scripted_llm, answer="Keys in a row")

    keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"*{instance_id}*"],
                          capture_output=True, text=True, timeout=30).stdout.split()
    conversation = subprocess.run(
        ["redis-cli", "HGET", f"{SERVICE_APP_ID}||assistant:_workflow_{instance_id}", "data"],
        capture_output=True, text=True, timeout=30).stdout

    assert f"{SERVICE_APP_ID}||assistant:_workflow_{instance_id}" in keys   # conversation and agent state
    assert f"{SERVICE_APP_ID}||assistant:_memory_{instance_id}" in keys     # long-term memory summary
    assert any(k.endswith(f"||{instance_id}||history-000000") for k in keys)  # workflow engine history
    assert "Keys in a row" in conversation


# -- registry -----------------------------------------------------------------------------
def test_a_clean_shutdown_removes_the_agent_from_the_registry(service, redis_client):
    entry = f"{SERVICE_APP_ID}||agents:default:Assistant"
    index = f"{SERVICE_APP_ID}||agents:default:_index"
    assert redis_client.exists(entry)

    service.stop()

    assert not redis_client.exists(entry)
    assert "Assistant" not in json.loads(redis_client.hget(index, "data") or '{"agents": []}')["agents"]
