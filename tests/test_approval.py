"""examples/approval/refund_agent.py: a tool call behind a human's approval, exactly once through crashes.

The scripted LLM plays a model that calls `refund(order_id, amount)` for the task and, once the tool
answered, says "Done: <the tool's result>". Each test uses an order id of its own, so the refund records
(keys `refund-agent||refund:<order>` in Redis) are its own too."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf.wrappers_pb2 import StringValue

from helpers import wait_for
from tools.proof import figures
from tools.runs.approvals import answer, waiting_approval, waiting_approvals
from tools.runs.refund_app import APP_URL, APPROVAL_APP, NAME, RefundApp, refund_records
from tools.runs.workflows import _stub, sidecar_grpc_port
from tools.stack.processes import alive, recorded, stop_dapr_run
from tools.stack.settings import APPROVAL_APP_ID, LOG_DIR, ROOT

# Long enough for a kill and a restart while a run waits; the timeout test runs an app with a short one.
APPROVAL_TIMEOUT_S = 60
SHORT_TIMEOUT_S = 3
FINAL = "Done: {tool_result}"
NOT_EXECUTED = "Tool 'refund' was not executed: approval was not granted or timed out."


@pytest.fixture(scope="module")
def refund_app_config(local_stack, llm_env):
    app = RefundApp(local_stack, llm_env, LOG_DIR / "refund-agent-tests.log",
                    env={"APPROVAL_TIMEOUT_S": str(APPROVAL_TIMEOUT_S)})
    yield app
    app.stop()


@pytest.fixture
def refund_app(refund_app_config: RefundApp) -> RefundApp:
    """The module's refund agent, started again if an earlier test stopped it or ran one of its own."""
    if recorded(NAME) is None:
        refund_app_config.start(append=True)
    return refund_app_config


def order_and_task(scripted_llm, amount: float) -> tuple[str, str]:
    order_id = f"T-{uuid.uuid4().hex[:8]}"
    task = scripted_llm.task(f"Please refund {amount} EUR for order {order_id}.")
    scripted_llm.call_tool_when(task, "refund", {"order_id": order_id, "amount": amount}, FINAL)
    return order_id, task


def start_run(task: str, timeout_s: float = 30) -> str:
    response = httpx.post(f"{APP_URL}/run", json={"task": task}, timeout=timeout_s)
    assert response.status_code == 200, response.text
    return response.json()["instance_id"]


def wait_for_approval_request(instance_id: str) -> dict:
    return wait_for(lambda: waiting_approval(instance_id, sidecar_grpc_port(APPROVAL_APP_ID)),
                    f"run {instance_id} to wait for an approval")


def wait_until_done(instance_id: str, timeout_s: float = 60) -> dict:
    def done():
        response = httpx.get(f"{APP_URL}/run/{instance_id}", timeout=30)
        if response.status_code != 200:  # 500: a half-written state read; the next read is fine
            return None
        status = response.json()
        return status if status["runtime_status"] in {"COMPLETED", "FAILED", "TERMINATED"} else None

    return wait_for(done, f"run {instance_id} to finish", timeout_s)


def final_answer(status: dict) -> str:
    assert status["runtime_status"] == "COMPLETED", status
    return json.loads(status["serialized_output"])["content"]


def tool_messages(scripted_llm, task: str) -> list[str]:
    """What the tool answered, as the LLM was given it."""
    return [str(m.get("content")) for call in scripted_llm.calls_mentioning(task) for m in call.messages
            if m.get("role") == "tool"]


def test_approved_refund_runs_once_and_the_answer_uses_its_result(refund_app, scripted_llm):
    order_id, task = order_and_task(scripted_llm, 42.5)
    instance_id = start_run(task)
    waiting = wait_for_approval_request(instance_id)
    assert (waiting["tool"], waiting["arguments"]) == ("refund", {"order_id": order_id, "amount": 42.5})
    assert refund_records(order_id) == [], "the refund was recorded before anyone approved it"
    answer(instance_id, True, sidecar_grpc_port(APPROVAL_APP_ID))
    result = f"refunded 42.50 EUR for order {order_id}"
    assert final_answer(wait_until_done(instance_id)) == f"Done: {result}"
    assert tool_messages(scripted_llm, task) == [result]
    records = refund_records(order_id)
    assert [r.get("version") for r in records] == ["1"], f"refund records after approval: {records}"


def make_approve(*args: str) -> str:
    result = subprocess.run(["make", "-s", "approve", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_denied_refund_never_runs_and_the_run_says_so(refund_app, scripted_llm):
    """Denied from a terminal: `make approve` lists the run, `make approve ID=<instance> DENY=1` answers it."""
    order_id, task = order_and_task(scripted_llm, 10.0)
    instance_id = start_run(task)
    wait_for_approval_request(instance_id)
    assert re.search(rf"^{instance_id}  refund\(order_id='{order_id}', amount=10.0\)  \d+ s left$",
                     make_approve(), re.MULTILINE)
    assert make_approve(f"ID={instance_id}", "DENY=1").startswith(f"denied: {instance_id}  refund(")
    assert final_answer(wait_until_done(instance_id)) == f"Done: {NOT_EXECUTED}"
    assert refund_records(order_id) == [], "the refund was recorded although it was denied"


@pytest.mark.known_limitation
def test_the_runners_approval_list_keeps_requests_answered_through_the_workflow_api(refund_app, scripted_llm):
    """GET /hitl/approvals lists the runner's in-process dict, which only its own /respond route empties:
    a request answered through the workflow API (or timed out) stays listed until the app restarts."""
    _, task = order_and_task(scripted_llm, 3.0)
    instance_id = start_run(task)
    asked = wait_for_approval_request(instance_id)
    answer(instance_id, False, sidecar_grpc_port(APPROVAL_APP_ID))
    wait_until_done(instance_id)
    listed = httpx.get(f"{APP_URL}/hitl/approvals", timeout=30).json()
    request_id = asked["event"].removeprefix("approval_response_")
    assert request_id in [entry["approval_request_id"] for entry in listed], listed


def test_no_answer_before_the_timeout_is_a_denial(refund_app_config, local_stack, llm_env, scripted_llm):
    stop_dapr_run(NAME)
    app = RefundApp(local_stack, llm_env, LOG_DIR / "refund-agent-tests.log",
                    env={"APPROVAL_TIMEOUT_S": str(SHORT_TIMEOUT_S)})
    app.start(append=True)
    try:
        order_id, task = order_and_task(scripted_llm, 7.0)
        instance_id = start_run(task)
        asked = wait_for_approval_request(instance_id)
        assert asked["seconds_left"] is not None, "the run waits without a deadline"
        assert asked["seconds_left"] <= SHORT_TIMEOUT_S
        started = time.monotonic()
        assert final_answer(wait_until_done(instance_id, timeout_s=30)) == f"Done: {NOT_EXECUTED}"
        assert time.monotonic() - started < 30
        assert refund_records(order_id) == [], "the refund was recorded although nobody approved it"
    finally:
        app.stop()  # the next test starts the module's app again


def test_sigkill_of_app_and_sidecar_while_waiting_then_approve(refund_app, scripted_llm):
    order_id, task = order_and_task(scripted_llm, 42.5)
    instance_id = start_run(task)
    asked = wait_for_approval_request(instance_id)
    app, daprd = refund_app.processes()
    for process in (app, daprd):
        process.send_signal(signal.SIGKILL)
    wait_for(lambda: not alive(app) and not alive(daprd), "the killed app and sidecar to be gone")
    stop_dapr_run(NAME)
    refund_app.start(append=True)
    assert wait_for_approval_request(instance_id)["event"] == asked["event"]
    answer(instance_id, True, sidecar_grpc_port(APPROVAL_APP_ID))
    assert final_answer(wait_until_done(instance_id)) == f"Done: refunded 42.50 EUR for order {order_id}"
    records = refund_records(order_id)
    assert [r.get("version") for r in records] == ["1"], f"refund records after the crash: {records}"


def test_retried_tool_activity_does_not_repeat_the_refund(refund_app_config, local_stack, llm_env, scripted_llm,
                                                          tmp_path):
    """The app dies (SIGKILL) right after the tool's write, before its activity completed; the sidecar runs
    the activity again after the restart, and the refund is still written once."""
    stop_dapr_run(NAME)
    marker = tmp_path / "crashed-after-refund"
    app = RefundApp(local_stack, llm_env, LOG_DIR / "refund-agent-tests.log",
                    env={"APPROVAL_TIMEOUT_S": str(APPROVAL_TIMEOUT_S), "REFUND_CRASH_MARKER": str(marker)},
                    script="tests/refund_crash_after_record.py")
    app.start(append=True)
    try:
        order_id, task = order_and_task(scripted_llm, 42.5)
        instance_id = start_run(task)
        wait_for_approval_request(instance_id)
        killed_app, _ = app.processes()
        answer(instance_id, True, sidecar_grpc_port(APPROVAL_APP_ID))
        wait_for(lambda: marker.exists() and not alive(killed_app), "the app to die right after the refund's write")
        stop_dapr_run(NAME)
        app.start(append=True)
        assert final_answer(wait_until_done(instance_id)) == f"Done: refunded 42.50 EUR for order {order_id}"
        records = refund_records(order_id)
        assert [r.get("version") for r in records] == ["1"], f"refund written again by the retry: {records}"
    finally:
        app.stop()


def test_a_tool_that_raises_gives_its_error_to_the_llm(refund_app, scripted_llm):
    order_id, task = order_and_task(scripted_llm, -5.0)
    instance_id = start_run(task)
    wait_for_approval_request(instance_id)
    answer(instance_id, True, sidecar_grpc_port(APPROVAL_APP_ID))
    wait_until_done(instance_id)
    # dapr-agents' tool executor catches the error first and hands run_tool an MCP-style error result
    # (docs/tools.md): the message is kept, the exception's type is not.
    (given,) = tool_messages(scripted_llm, task)
    error = json.loads(given)
    assert error["isError"] is True, given
    assert "a refund must be positive, not -5.0" in error["content"][0]["text"], given
    assert final_answer(wait_until_done(instance_id)) == f"Done: {given}"
    assert refund_records(order_id) == []


WAITING_RUNS = 100
AGENT_WORKFLOW = "dapr.agents.Refunds.workflow"  # the agent's workflow, as its runs' history names it
MEASURE_WINDOW_S = 10.0


def usage(process) -> dict:
    with process.oneshot():
        return {"rss_mb": process.memory_info().rss / 2**20, "threads": process.num_threads(),
                "cpu_s": sum(process.cpu_times()[:2])}


@pytest.mark.known_limitation
def test_the_runners_post_run_holds_a_thread_until_the_run_ends(refund_app, scripted_llm):
    """dapr-agents' POST /run (detached, log=True) watches each run to its end with
    asyncio.to_thread(wait_for_workflow_completion): a thread of the app's default executor,
    min(32, cores + 4) of them, per unfinished run. When that many runs wait for a human, the next
    POST /run waits for a free thread too: it is answered only when one of them ends."""
    app_process, _ = refund_app.processes()
    executor_threads = min(32, (len(app_process.cpu_affinity()) or 1) + 4)
    grpc_port = sidecar_grpc_port(APPROVAL_APP_ID)
    runs = [start_run(order_and_task(scripted_llm, 1.0)[1]) for _ in range(executor_threads)]
    for instance_id in runs:
        wait_for_approval_request(instance_id)
    queued_order, queued_task = order_and_task(scripted_llm, 1.0)
    with pytest.raises(httpx.ReadTimeout):
        start_run(queued_task, timeout_s=5)
    for instance_id in runs:  # deny them: their threads come free, and the queued POST /run goes through
        answer(instance_id, False, grpc_port)
    for instance_id in runs:
        wait_until_done(instance_id)
    # The POST that timed out on our side still waits in the app: it starts its run now. Answer that one too.
    (queued,) = wait_for(lambda: [w for w in waiting_approvals(grpc_port)
                                  if w["arguments"]["order_id"] == queued_order],
                         "the queued POST /run's run to wait for approval")
    answer(queued["instance_id"], False, grpc_port)
    wait_until_done(queued["instance_id"])


def test_100_runs_waiting_for_approval_hold_no_thread(refund_app_config, local_stack, llm_env, scripted_llm):
    """A run waiting for an event is state in Redis and a timer in the scheduler, not a thread: the app's
    threads and CPU stay where they were idle while WAITING_RUNS runs wait; the figures go to docs/tools.md."""
    stop_dapr_run(NAME)
    app = RefundApp(local_stack, llm_env, LOG_DIR / "refund-agent-tests.log", env={"APPROVAL_TIMEOUT_S": "900"})
    app.start(append=True)
    try:
        app_process, daprd = app.processes()
        idle = {"app": usage(app_process), "sidecar": usage(daprd)}
        # Through the sidecar's workflow API: the runner's POST /run holds a thread per unfinished run
        # (test_the_runners_post_run_holds_a_thread_until_the_run_ends), which is not the workflow's cost.
        stub, started = _stub(app.sidecar_grpc_port()), time.monotonic()
        runs = [uuid.uuid4().hex for _ in range(WAITING_RUNS)]
        for instance_id in runs:
            task = json.dumps({"task": order_and_task(scripted_llm, 1.0)[1]})
            stub.StartInstance(pb.CreateInstanceRequest(instanceId=instance_id, name=AGENT_WORKFLOW,
                                                        input=StringValue(value=task)), timeout=10)
        grpc_port = sidecar_grpc_port(APPROVAL_APP_ID)
        wait_for(lambda: len(scripted_llm.task_calls()) >= WAITING_RUNS, "every run's first LLM call", 240)
        wait_for(lambda: all(waiting_approval(i, grpc_port) for i in runs), "every run to wait for approval", 240)
        before = {"app": usage(app_process), "sidecar": usage(daprd)}
        time.sleep(MEASURE_WINDOW_S)  # a measuring window, not a wait for something to happen
        after = {"app": usage(app_process), "sidecar": usage(daprd)}
        waiting_after_s = time.monotonic() - started
        lines = [f"{WAITING_RUNS} runs started through the workflow API, all waiting after {waiting_after_s:.1f} s",
                 f"{WAITING_RUNS} runs waiting for approval at once, measured over {MEASURE_WINDOW_S:.0f} s:",
                 f"  {'':8} {'RSS idle':>10} {'RSS waiting':>12} {'threads idle':>13} {'threads waiting':>16} "
                 f"{'CPU waiting':>12}"]
        for who in ("app", "sidecar"):
            cpu = (after[who]["cpu_s"] - before[who]["cpu_s"]) / MEASURE_WINDOW_S * 100
            lines.append(f"  {who:8} {idle[who]['rss_mb']:>7.0f} MB {after[who]['rss_mb']:>9.0f} MB "
                         f"{idle[who]['threads']:>13} {after[who]['threads']:>16} {cpu:>10.1f} %")
        figures.keep_sample("sample: runs waiting for approval", "\n".join(lines))
        print("\n".join(lines))
        assert after["app"]["threads"] <= idle["app"]["threads"] + 10, lines
        assert (after["app"]["cpu_s"] - before["app"]["cpu_s"]) / MEASURE_WINDOW_S < 0.2, lines
        for instance_id in runs:  # deny them all, so that nothing of this test is left waiting
            answer(instance_id, False, grpc_port)
        for instance_id in runs:
            wait_until_done(instance_id, timeout_s=240)
    finally:
        app.stop()


def test_make_approval_demo_prints_what_docs_tools_md_shows(refund_app_config):
    stop_dapr_run(NAME)  # the demo starts the agent itself, on the same ports; the next test's fixture restarts it
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tools.runs.approval_demo"], cwd=ROOT, capture_output=True,
                            text=True, timeout=240)
    took_s = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    instance_id = re.search(r"run ([0-9a-f]{32}) started", out).group(1)
    steps = ["waits for a human", "refunds recorded so far: 0", "SIGKILL to the app", "the run still waits",
             "approved, as `make approve", f"run {instance_id} COMPLETED", "the answer: Done: refunded 42.50 EUR",
             "refunds recorded for order A-1042: 1", "version 1"]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), out
    assert took_s < 120, f"the demo took {took_s:.0f} s"
    figures.keep_sample("sample: make approval-demo", out)
    problems = figures.sample_problems("sample: make approval-demo", out,
                                       varies=lambda line: line.startswith("[stack]") or re.match(r"-?\d+ \w+", line))
    assert not problems, "\n".join(problems)


def test_the_examples_readme_runs_what_the_demo_and_the_tests_run():
    readme = (ROOT / "examples" / "approval" / "README.md").read_text()
    assert "    dapr run " + " ".join(APPROVAL_APP) + "\n" in readme


def test_the_dashboard_shows_a_waiting_run_and_approves_or_denies_it(refund_app, scripted_llm):
    from fastapi.testclient import TestClient

    from tools.runs.dashboard import build_app

    dashboard = TestClient(build_app(APPROVAL_APP_ID), base_url="http://localhost")
    outcomes = {}
    for action in ("approve", "deny"):
        order_id, task = order_and_task(scripted_llm, 12.5)
        instance_id = start_run(task)
        wait_for_approval_request(instance_id)
        shown = dashboard.get(f"/api/runs/{instance_id}").json()["approval"]
        assert (shown["tool"], shown["arguments"]) == ("refund", {"order_id": order_id, "amount": 12.5}), shown
        assert 0 < shown["seconds_left"] <= APPROVAL_TIMEOUT_S, shown
        response = dashboard.post(f"/api/runs/{instance_id}/{action}", headers={"X-Dashboard": "1"})
        assert response.status_code == 200, response.text
        outcomes[action] = (final_answer(wait_until_done(instance_id)), len(refund_records(order_id)))
        assert dashboard.get(f"/api/runs/{instance_id}").json()["approval"] is None
    assert outcomes["approve"][1] == 1 and outcomes["approve"][0].startswith("Done: refunded 12.50 EUR"), outcomes
    assert outcomes["deny"] == (f"Done: {NOT_EXECUTED}", 0), outcomes


def test_an_approval_sent_through_the_replica_that_did_not_ask_completes_the_run(refund_app, local_stack, llm_env,
                                                                                  scripted_llm):
    """Two replicas of the agent (one app id). The request sits in the runner's list of the one whose process
    ran the publishing activity only, and the other's /respond route answers 404 (upstream's per-process
    dict); the event raised through the other replica's sidecar still reaches the run."""
    second = RefundApp(local_stack, llm_env, LOG_DIR / "refund-agent-replica-2.log",
                       env={"APPROVAL_TIMEOUT_S": str(APPROVAL_TIMEOUT_S)}, second_replica=True)
    second.start()
    try:
        order_id, task = order_and_task(scripted_llm, 42.5)
        instance_id = start_run(task)
        request_id = wait_for_approval_request(instance_id)["event"].removeprefix("approval_response_")
        replicas = (refund_app, second)
        listed = [request_id in [entry["approval_request_id"] for entry in httpx.get(f"{r.url}/hitl/approvals").json()]
                  for r in replicas]
        assert listed.count(True) == 1, f"the request is in the lists of {listed.count(True)} replicas, not 1"
        other = replicas[listed.index(False)]
        refused = httpx.post(f"{other.url}/hitl/approvals/{request_id}/respond", json={"approved": True}, timeout=30)
        assert refused.status_code == 404, refused.text
        answer(instance_id, True, other.sidecar_grpc_port())
        assert final_answer(wait_until_done(instance_id)) == f"Done: refunded 42.50 EUR for order {order_id}"
        assert [r.get("version") for r in refund_records(order_id)] == ["1"]
    finally:
        second.stop()
