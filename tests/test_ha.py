"""High availability on one machine: `make serve-ha` runs three "hosts" (127.0.0.2-4), each
with a placement node, a scheduler node and a replica of the service, on loopback only.

Under a steady load over HTTP and pub/sub spread across the replicas, four faults strike
one at a time, with recovery in between: a SIGKILL of the placement leader, of a
scheduler node, of a replica (app and sidecar), and the placement leader's host cut off
(its processes frozen with SIGSTOP, then resumed). Every acknowledged run completes, and
each task runs exactly once, over HTTP and over pub/sub (docs/ha.md#exactly-once). Figures
per fault: the time to the next completed run, and the p95 run time of the runs in flight during it. Alone:
`pytest -m ha`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import psutil
import pytest

from helpers import listeners_beyond_loopback, percentile, record_figure, stack_processes, wait_for
from tools.ha import cluster as ha
from tools.ha.load import SUBMIT_TIMEOUT_S, SteadyLoad, epoch, runs_by_task
from tools.proof import figures
from tools.stack import processes, services, settings
from tools.stack.scripted_llm import DEFAULT_ANSWER
from tools.stack.settings import HA_APP_PORTS, HA_HOSTS, HA_SIDECAR_HTTP_PORTS

pytestmark = pytest.mark.ha

RUNS = 300  # at least this many runs go through the faults
RATE_PER_S = 3.0  # steady, well under what the three replicas can take on two cores
LLM_DELAY_S = 0.2  # each LLM call takes this long, so that every fault finds runs in flight
RECOVERY_DEADLINE_S = 45.0  # a fault after which no run completes for this long has stalled the service
HOST_CUT_S = 10.0  # how long a host stays frozen: longer than placement's keepalive, shorter than pub/sub's
# redelivery (60 s), after which a message whose run is stalled would be handed out again and run twice


def _stop_the_sessions_service() -> None:
    """Replica 0's app takes the single service's port (8001); the `service` fixture starts it again."""
    processes.stop_dapr_run("service")


@pytest.fixture(scope="module")
def ha_cluster(local_stack, llm_env):
    """The HA stack in this process, sharing the session's Redis and Zipkin."""
    _stop_the_sessions_service()
    with ha.running(llm_env) as cluster:
        yield cluster


def _ha_processes() -> dict[str, list[psutil.Process]]:
    """record name -> its process and descendants, for the HA stack's nodes (ha-placement-0, ...)."""
    found = {}
    for name in processes.recorded_names():
        process = processes.recorded(name)
        if name.startswith("ha-") and process is not None:
            found[name] = [process, *process.children(recursive=True)]
    return found


def _listen_addresses(members: list[psutil.Process]) -> set[str]:
    return {c.laddr.ip for p in members if p.name() != "python" for c in p.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def _completed(client: httpx.Client, port: int, instance_id: str) -> dict | None:
    response = client.get(f"http://127.0.0.1:{port}/run/{instance_id}")
    # 500: known, a status read while the run's state is half written in Redis (helpers.Service.wait_until_done).
    status = response.json() if response.status_code == 200 else {}
    return status if status.get("runtime_status") == "COMPLETED" else None


def test_make_serve_ha_runs_three_hosts_on_loopback_only_and_ctrl_c_leaves_nothing_listening(
        local_stack, scripted_llm, llm_env):
    _stop_the_sessions_service()
    settings.LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(settings.LOG_DIR / "make-serve-ha.log", "wb") as log:
        command = subprocess.Popen(["make", "-s", "serve-ha"], cwd=settings.ROOT, env=llm_env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # as a terminal starts it
    try:
        wait_for(lambda: all(ha.replica_ready(i) for i in range(3)) and ha.placement_leader() is not None,
                 "make serve-ha to be ready", timeout_s=180, interval_s=0.5)
        nodes = _ha_processes()
        names = sorted(p.name() for members in nodes.values() for p in members)
        assert [names.count(n) for n in ("placement", "scheduler", "daprd")] == [3, 3, 3], names

        assert listeners_beyond_loopback(stack_processes()) == []
        # Each node on its own host's address; on 127.0.0.1, as each host's own loopback, the health ports and
        # the sidecars' APIs, each on ports of its own.
        for name, members in nodes.items():
            assert _listen_addresses(members) == {HA_HOSTS[int(name[-1])], settings.LOOPBACK}, name
        with httpx.Client(timeout=30) as client:  # a run through each replica, its status read on another
            for k, port in enumerate(HA_APP_PORTS):
                task = scripted_llm.task("ha smoke")
                instance_id = client.post(f"http://127.0.0.1:{port}/run", json={"task": task}).json()["instance_id"]
                status = wait_for(lambda k=k, i=instance_id: _completed(client, HA_APP_PORTS[k - 1], i), task)
                assert json.loads(status["serialized_output"])["content"] == DEFAULT_ANSWER

        os.killpg(command.pid, signal.SIGINT)  # Ctrl+C: the terminal signals the whole group
        command.wait(timeout=90)
        every = [p for members in nodes.values() for p in members]
        wait_for(lambda: not any(processes.alive(p) for p in every), "every process of make serve-ha to end",
                 timeout_s=30)
        per_host = (settings.PLACEMENT_PORT, settings.PLACEMENT_RAFT_PORT, settings.SCHEDULER_PORT,
                    settings.SCHEDULER_ETCD_PEER_PORT)
        listening = [f"{host}:{port}" for i, host in enumerate(HA_HOSTS)
                     for port in (*per_host, HA_SIDECAR_HTTP_PORTS[i]) if processes.port_in_use(port, host)]
        listening += [f"127.0.0.1:{port}" for port in HA_APP_PORTS if processes.port_in_use(port)]
        assert listening == []
        assert _ha_processes() == {}
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
            command.wait(timeout=30)
        services.stop_leftovers()


def test_a_hard_kill_of_make_serve_ha_leaves_nothing_serving(local_stack, scripted_llm, llm_env):
    """SIGKILL to the whole group (a closed terminal, `kill -9` of the job): every node ends with it. Each `dapr
    run` gets the parent-death signal; it acts on it at once only if its sidecar answers on 127.0.0.1."""
    _stop_the_sessions_service()
    with open(settings.LOG_DIR / "make-serve-ha-killed.log", "wb") as log:
        command = subprocess.Popen(["make", "-s", "serve-ha"], cwd=settings.ROOT, env=llm_env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: all(ha.replica_ready(i) for i in range(3)), "make serve-ha to be ready", timeout_s=180,
                 interval_s=0.5)
        every = [p for members in _ha_processes().values() for p in members]
        assert len(every) >= 12, every  # 3 placement, 3 scheduler, 3 x (dapr run, daprd, app)

        os.killpg(command.pid, signal.SIGKILL)
        command.wait(timeout=10)
        wait_for(lambda: not any(processes.alive(p) for p in every), "every process of the killed make serve-ha to "
                 "end", timeout_s=20, interval_s=0.2)
        assert [f"{host}:{port}" for i, host in enumerate(HA_HOSTS) for port in
                (settings.PLACEMENT_PORT, settings.SCHEDULER_PORT, HA_SIDECAR_HTTP_PORTS[i])
                if processes.port_in_use(port, host)] == []
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
            command.wait(timeout=30)
        services.stop_leftovers()


@pytest.mark.timeout(600)
def test_every_run_completes_and_http_runs_exactly_once_while_placement_scheduler_replica_and_host_fail(
        ha_cluster, scripted_llm, redis_client):
    cluster = ha_cluster
    scripted_llm.set_delay(LLM_DELAY_S)
    load = SteadyLoad(scripted_llm.task("steady load"), RATE_PER_S, max_runs=3 * RUNS)
    seen_done: set[str] = set()
    faults: list[dict] = []
    started = time.monotonic()

    def fault(kind: str, which: str, strike, replica: int | None = None) -> None:
        """Strike; wait until a run sent after it completes (or fail: the service stalled); start again what is
        down (a killed node; a placement leader that ended itself), wait until the cluster is whole and serves
        new runs again: then the next fault may strike. `kind` names the fault in docs/figures.json, `which` the
        node or host it struck."""
        name = f"{kind} ({which})"
        if replica is not None:
            load.take_out(replica)
        at = time.time()
        strike()
        wait_for(lambda: load.a_run_completed_since(at, seen_done), f"a run sent after it to complete: {name}",
                 timeout_s=RECOVERY_DEADLINE_S, interval_s=0.3)
        wait_for(lambda: cluster.heal() is not None and cluster.whole(), f"the cluster to be whole after: {name}",
                 timeout_s=120, interval_s=0.5)
        if replica is not None:
            load.put_back(replica)
        whole = time.time()
        wait_for(lambda: load.a_run_completed_since(whole, seen_done), f"new runs to complete again after: {name}",
                 timeout_s=RECOVERY_DEADLINE_S, interval_s=0.3)
        faults.append({"fault": kind, "which": which, "at": at, "until": time.time(), "replica": replica})

    def cut_off_for_a_while(host: int) -> None:
        cluster.signal_host(host, signal.SIGSTOP)
        frozen_at = time.monotonic()
        wait_for(lambda: time.monotonic() - frozen_at > HOST_CUT_S, "the host's time cut off", timeout_s=60)
        cluster.signal_host(host, signal.SIGCONT)

    load.thread.start()
    try:
        wait_for(lambda: load.a_run_completed_since(0, seen_done), "the first run to complete", timeout_s=60)
        leader = ha.placement_leader()
        fault("placement leader killed", settings.HA_PLACEMENT_IDS[leader],
              lambda: cluster.kill(f"ha-placement-{leader}"))
        fault("scheduler node killed", settings.HA_SCHEDULER_IDS[1], lambda: cluster.kill("ha-scheduler-1"))
        fault("replica killed", "replica 2: its app and sidecar", lambda: cluster.kill("ha-replica-2"), replica=2)
        # The hardest host to lose: the placement leader's. While it is frozen the whole service waits
        # (docs/ha.md#a-frozen-host), so here the runs must complete once it is back; its placement node then
        # ends itself ("lost leadership") and is started again.
        host = ha.placement_leader()
        fault("placement leader's host frozen", f"{HA_HOSTS[host]} for {HOST_CUT_S:.0f} s",
              lambda: cut_off_for_a_while(host), replica=host)
        wait_for(lambda: len(load.submissions) >= RUNS, f"{RUNS} runs to be submitted", timeout_s=180)
    finally:
        load.stop()
        for i in range(len(HA_HOSTS)):
            cluster.signal_host(i, signal.SIGCONT)
        scripted_llm.set_delay(0)

    submissions = {s.task: s for s in load.submissions}
    # Every submission is answered, but a POST /run in flight as a fault struck may get no answer at all
    # (seen once as the placement leader died): its run may or may not have started, and runs once at most.
    assert {t: s.error for t, s in submissions.items() if s.error and not s.unanswered} == {}
    unanswered = {t for t, s in submissions.items() if s.unanswered}
    assert {t for t in unanswered if not any(submissions[t].sent_at < f["until"]
                                             and submissions[t].sent_at + SUBMIT_TIMEOUT_S > f["at"] for f in faults)} \
        == set()
    statuses: dict[str, dict] = {}  # instance id -> its final status
    seen_runs: dict[str, list[str]] = {}  # what the last look found, for the failure message

    def all_done():
        runs = runs_by_task(redis_client, load.marker)
        seen_runs.clear()
        seen_runs.update(runs)
        for instance_id in [i for ids in runs.values() for i in ids if i not in statuses][:50]:
            status = load.status(instance_id)
            if status and status["runtime_status"] in {"COMPLETED", "FAILED", "TERMINATED"}:
                statuses[instance_id] = status  # a finished run's status no longer changes
        finished = all(i in statuses for ids in runs.values() for i in ids)
        return runs if set(submissions) - unanswered <= set(runs) <= set(submissions) and finished else None

    def unfinished() -> str:
        no_run = sorted(set(submissions) - unanswered - set(seen_runs))
        open_runs = [i for ids in seen_runs.values() for i in ids if i not in statuses]
        return (f"every run to finish ({len(no_run)} acknowledged tasks with no run, e.g. {no_run[:3]}; "
                f"{len(open_runs)} runs not finished, e.g. {open_runs[:3]})")

    runs = wait_for(all_done, unfinished, timeout_s=240, interval_s=1)
    assert {i: s["runtime_status"] for i, s in statuses.items() if s["runtime_status"] != "COMPLETED"} == {}
    assert {i for i, s in statuses.items() if json.loads(s["serialized_output"])["content"] != DEFAULT_ANSWER} == set()
    done_at = {task: min(epoch(statuses[i]["last_updated_at"]) for i in ids) for task, ids in runs.items()}
    took = {task: done_at[task] - submissions[task].sent_at for task in runs}

    def in_flight_during(f: dict) -> set[str]:
        return {t for t in runs if submissions[t].sent_at < f["until"] and done_at[t] > f["at"]}

    # Exactly once over HTTP: POST /run answers with the id of the one run it started. Exactly once over
    # pub/sub: a published task's run id comes from its CloudEvent (input_guard.py, OneRunPerMessage), so a
    # message Redis hands out again after a fault (60 s unacknowledged) finds its run and starts nothing.
    twice = {task: ids for task, ids in runs.items() if len(ids) != 1}
    assert {task: ids for task, ids in twice.items() if submissions[task].trigger == "http"} == {}
    assert {task: ids for task, ids in twice.items() if submissions[task].trigger != "http"} == {}
    caught = set().union(*(in_flight_during(f) for f in faults))

    # Activities are at-least-once too: a run whose LLM call a fault cut (a dead or frozen replica; actors
    # moved when placement changed leader; a reminder handed out again by the scheduler) asks again. Each run
    # asks twice (its answer, its summary); more only for runs a fault caught.
    calls = {task: len(scripted_llm.calls_mentioning(task)) for task in runs}
    assert {task: n for task, n in calls.items() if n < 2 * len(runs[task])} == {}
    assert {t: n for t, n in calls.items() if n > 2 * len(runs[t]) and t not in caught} == {}

    quiet = [took[t] for t in runs if t not in caught]
    measured = {f"HA fault: {f['fault']}": dict(
        which=f["which"],
        fault_to_next_completed_run_s=round(min(d for d in done_at.values() if d > f["at"]) - f["at"], 1),
        fault_to_first_new_run_completed_s=round(min(done_at[t] for t in runs if submissions[t].sent_at > f["at"])
                                                 - f["at"], 1),
        run_p95_during_fault_s=round(percentile([took[t] for t in in_flight_during(f)], 95), 2),
        fault_to_serving_again_s=round(f["until"] - f["at"], 1)) for f in faults}
    measured["HA load: steady load through the four faults"] = dict(
        runs=len(submissions), rate_per_s=RATE_PER_S, run_p95_outside_faults_s=round(percentile(quiet, 95), 2),
        pubsub_tasks_run_twice=len(twice), submissions_retried=sum(1 for s in submissions.values() if s.retries),
        submissions_unanswered=len(unanswered), llm_calls_repeated=sum(calls[t] - 2 * len(runs[t]) for t in runs),
        duration_s=round(time.monotonic() - started, 1))
    for name, values in measured.items():
        record_figure(name, **values)
        figures.keep(name, **values)
