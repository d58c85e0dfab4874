"""examples/approval/refund_agent.py under `make serve-ha APP=refund-agent`: three replicas of the refund agent
(one app id) on 127.0.0.2-4, with 3 placement and 3 scheduler nodes.

A run waits for a human. The replica that asked (whose process ran the publishing activity, so the only one
whose runner lists the request) is killed with SIGKILL, app and sidecar; the approval is then raised
through another replica's sidecar, by its workflow HTTP API: the run completes on a survivor, the refund
recorded once. The runners' own `/hitl/approvals/{id}/respond` answers 404 on every replica but the one
that asked (docs/tools.md). Alone: `pytest -m ha tests/test_approval_ha.py`.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from helpers import wait_for
from tools.ha import cluster as ha
from tools.proof import figures
from tools.runs.approvals import waiting_approval
from tools.runs.refund_app import refund_records
from tools.stack import processes
from tools.stack.settings import APPROVAL_APP_ID, HA_APP_PORTS, HA_HOSTS, HA_SIDECAR_HTTP_PORTS

pytestmark = pytest.mark.ha

APPROVAL_TIMEOUT_S = 180  # room for a replica's death and the answer; then the refund would be denied
FINAL = "Done: {tool_result}"
RAISE_DEADLINE_S = 60.0  # the survivors take over the dead replica's actors within seconds (docs/ha.md)


@pytest.fixture(scope="module")
def refund_cluster(local_stack, llm_env):
    """The HA stack with the refund agent as its replicas, sharing the session's Redis and Zipkin."""
    processes.stop_dapr_run("service")  # replica 0's app takes the service's port; the `service` fixture restarts it
    with ha.running(dict(llm_env, APPROVAL_TIMEOUT_S=str(APPROVAL_TIMEOUT_S)),
                    app=ha.REPLICA_APPS[APPROVAL_APP_ID]) as cluster:
        yield cluster


def app_url(i: int) -> str:
    return f"http://127.0.0.1:{HA_APP_PORTS[i]}"


def sidecar_grpc_port(cluster: ha.Cluster, i: int) -> int:
    """Replica i's daprd gRPC port (`dapr run` picks it), from its command line."""
    daprd = next(p for p in cluster.processes(f"ha-replica-{i}") if p.name() == "daprd")
    args = daprd.cmdline()
    return int(args[args.index("--dapr-grpc-port") + 1])


def listed_by(i: int, request_id: str) -> bool:
    approvals = httpx.get(f"{app_url(i)}/hitl/approvals", timeout=30).json()
    return request_id in [entry["approval_request_id"] for entry in approvals]


def raise_through(i: int, instance_id: str, event: str, body: dict) -> httpx.Response:
    """The workflow API's raise-event on replica i's sidecar, at its host's address: what `curl` does."""
    url = f"http://{HA_HOSTS[i]}:{HA_SIDECAR_HTTP_PORTS[i]}/v1.0/workflows/dapr/{instance_id}/raiseEvent/{event}"
    return httpx.post(url, json=body, timeout=30)


def finished(i: int, instance_id: str) -> dict | None:
    response = httpx.get(f"{app_url(i)}/run/{instance_id}", timeout=30)
    status = response.json() if response.status_code == 200 else {}  # 500: a half-written state read
    return status if status.get("runtime_status") in {"COMPLETED", "FAILED", "TERMINATED"} else None


def test_under_serve_ha_a_run_waiting_for_approval_outlives_the_replica_that_asked_and_completes_once_approved_through_another(  # noqa: E501
        refund_cluster, scripted_llm):
    order_id = f"H-{uuid.uuid4().hex[:8]}"
    task = scripted_llm.task(f"Please refund 42.5 EUR for order {order_id}.")
    scripted_llm.call_tool_when(task, "refund", {"order_id": order_id, "amount": 42.5}, FINAL)
    response = httpx.post(f"{app_url(0)}/run", json={"task": task}, timeout=30)
    assert response.status_code == 200, response.text
    instance_id = response.json()["instance_id"]
    waiting = wait_for(lambda: waiting_approval(instance_id, sidecar_grpc_port(refund_cluster, 0)),
                       f"run {instance_id} to wait for an approval")
    request_id = waiting["event"].removeprefix("approval_response_")
    assert refund_records(order_id) == [], "the refund was recorded before anyone approved it"

    # Upstream's per-process dict: one runner lists the request, the others' /respond cannot answer it.
    listed = [listed_by(i, request_id) for i in range(len(HA_HOSTS))]
    assert listed.count(True) == 1, f"the request is in the lists of {listed.count(True)} replicas, not 1"
    asker = listed.index(True)
    others = [i for i in range(len(HA_HOSTS)) if i != asker]
    for i in others:
        refused = httpx.post(f"{app_url(i)}/hitl/approvals/{request_id}/respond", json={"approved": True},
                             timeout=30)
        assert refused.status_code == 404, f"replica {i}: {refused.status_code} {refused.text}"

    refund_cluster.kill(f"ha-replica-{asker}")  # app, sidecar and `dapr run`, by SIGKILL, while the run waits
    killed = time.monotonic()
    answerer, tries = others[0], 1
    body = {"approval_request_id": request_id, "approved": True, "reason": "approved through another replica"}
    while (raised := raise_through(answerer, instance_id, waiting["event"], body)).status_code != 202:
        # While the survivors take over the dead replica's actors the sidecar may answer 500: try again.
        assert time.monotonic() - killed < RAISE_DEADLINE_S, \
            f"raise-event on replica {answerer}: {raised.status_code} {raised.text}"
        time.sleep(0.5)
        tries += 1
    accepted_s = time.monotonic() - killed

    status = wait_for(lambda: finished(answerer, instance_id), f"run {instance_id} to finish", 120)
    completed_s = time.monotonic() - killed
    assert status["runtime_status"] == "COMPLETED", status
    answer = json.loads(status["serialized_output"])["content"]
    assert answer == f"Done: refunded 42.50 EUR for order {order_id}", answer
    records = refund_records(order_id)
    assert [r.get("version") for r in records] == ["1"], f"refund records: {records}"
    lines = [f"run {instance_id} waits for approval of refund(order_id='{order_id}', amount=42.5)",
             f"the replica that asked: {asker} ({HA_HOSTS[asker]}), the only one whose GET /hitl/approvals lists it",
             f"POST /hitl/approvals/<id>/respond on replicas {others[0]} and {others[1]}: 404, 404",
             f"SIGKILL to replica {asker} (its app, sidecar and dapr run) while the run waits",
             f"raise-event through replica {answerer}'s sidecar (http://{HA_HOSTS[answerer]}:"
             f"{HA_SIDECAR_HTTP_PORTS[answerer]}): 202 after {accepted_s:.1f} s, at try {tries}",
             f"run COMPLETED {completed_s:.1f} s after the kill: {answer}",
             f"refund records for order {order_id}: {len(records)}, version {records[0].get('version')}"]
    print("\n".join(lines))
    figures.keep_sample("sample: an approval under make serve-ha", "\n".join(lines))


def persisted_pending_approvals(redis_client) -> dict:
    """What the replicas saved under the agent's one pending-approvals key (dapr-agents' `<name>:pending_approvals`)."""
    raw = redis_client.hget(f"{APPROVAL_APP_ID}||refunds:pending_approvals", "data")
    assert raw is not None, "no pending approvals are persisted under refund-agent||refunds:pending_approvals"
    value = json.loads(raw)
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.known_limitation
def test_the_replicas_overwrite_each_others_pending_approvals_in_the_state_store(refund_cluster, scripted_llm,
                                                                                redis_client):
    """dapr-agents saves each process's whole pending-approvals dict under one key, without an etag: with
    requests asked by two replicas, the key keeps those of the last replica that wrote it and loses the
    others' (what a restarted replica restores from it)."""
    refund_cluster.heal()  # the test before killed a replica
    runs: dict[str, str] = {}  # instance id -> its approval request id
    listed: dict[int, set[str]] = {}
    for n in range(12):  # until two replicas hold requests of this test; the instance id decides which
        order_id = f"P-{uuid.uuid4().hex[:8]}"
        task = scripted_llm.task(f"Please refund 1.0 EUR for order {order_id}.")
        scripted_llm.call_tool_when(task, "refund", {"order_id": order_id, "amount": 1.0}, FINAL)
        instance_id = httpx.post(f"{app_url(n % 3)}/run", json={"task": task}, timeout=30).json()["instance_id"]
        waiting = wait_for(lambda: waiting_approval(instance_id, sidecar_grpc_port(refund_cluster, 0)),  # noqa: B023
                           f"run {instance_id} to wait for an approval")
        runs[instance_id] = waiting["event"].removeprefix("approval_response_")
        wait_for(lambda: any(listed_by(i, runs[instance_id]) for i in range(3)),  # noqa: B023
                 f"a replica to list the request of run {instance_id}")
        listed = {i: {r for r in runs.values() if listed_by(i, r)} for i in range(3)}
        if sum(1 for ids in listed.values() if ids) >= 2:
            break
    try:
        assert sum(1 for ids in listed.values() if ids) >= 2, f"all {len(runs)} requests were asked by one replica"
        persisted = set(persisted_pending_approvals(redis_client)) & set(runs.values())
        lost = set(runs.values()) - persisted
        per_replica = ", ".join(f"{len(ids)} by replica {i}" for i, ids in listed.items())
        print(f"{len(runs)} runs waiting, their requests listed {per_replica}; {len(persisted)} in the persisted key, "
              f"{len(lost)} lost")
        assert lost, "the persisted key holds every replica's requests"
        assert any(persisted == ids for ids in listed.values()), "the key holds one replica's dict"
    finally:
        for instance_id, request_id in runs.items():  # deny them all, so that nothing of this test is left waiting
            body = {"approval_request_id": request_id, "approved": False, "reason": "end of the test"}
            assert raise_through(0, instance_id, f"approval_response_{request_id}", body).status_code == 202
        for instance_id in runs:
            wait_for(lambda: finished(0, instance_id), f"run {instance_id} to finish", 120)  # noqa: B023
