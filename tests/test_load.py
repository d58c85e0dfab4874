"""Load without loss, and a second replica.

200 tasks through `POST /run` and 200 through the topic, sent at once on
loopback: every one completes, none twice, none lost. Then two replicas of
the service share Redis, placement and scheduler; one is killed with runs in
flight and the survivor finishes them all. Figures go to the session report.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import time
import uuid
from datetime import datetime

import httpx
import psutil

from helpers import record_figure, wait_for
from tools import processes, settings, stack
from tools.settings import SERVICE_APP_ID, SERVICE_URL, SIDECAR_URL

TASKS_PER_TRIGGER = 200
CLIENT_CONCURRENCY = 32


async def _post_runs(tasks: list[str]) -> list[str]:
    limit = asyncio.Semaphore(CLIENT_CONCURRENCY)
    async with httpx.AsyncClient(base_url=SERVICE_URL, timeout=60) as client:
        async def post(task: str) -> str:
            async with limit:
                response = await client.post("/run", json={"task": task})
                response.raise_for_status()
                return response.json()["instance_id"]
        return list(await asyncio.gather(*(post(t) for t in tasks)))


async def _publish(tasks: list[str]) -> None:
    limit = asyncio.Semaphore(CLIENT_CONCURRENCY)
    async with httpx.AsyncClient(base_url=SIDECAR_URL, timeout=60) as client:
        async def publish(task: str) -> None:
            async with limit:
                response = await client.post("/v1.0/publish/agent-pubsub/assistant.topic", json={"task": task})
                assert response.status_code == 204, response.text
        await asyncio.gather(*(publish(t) for t in tasks))


async def _send_all(http_tasks: list[str], pubsub_tasks: list[str]) -> list[str]:
    instance_ids, _ = await asyncio.gather(_post_runs(http_tasks), _publish(pubsub_tasks))
    return instance_ids


def _runs_by_task(redis_client, marker: str) -> dict[str, list[str]]:
    """task -> the instance ids whose conversation starts with it (from the agent's state in Redis)."""
    runs: dict[str, list[str]] = {}
    for key in redis_client.scan_iter(match=f"{SERVICE_APP_ID}||assistant:_workflow_*", count=1000):
        data = redis_client.hget(key, "data") or ""
        if marker in data:
            task = json.loads(data)["messages"][0]["content"]
            runs.setdefault(task, []).append(key.rsplit("_", 1)[1])
    return runs


def _seconds(status: dict) -> float:
    created, updated = (datetime.fromisoformat(status[f]) for f in ("created_at", "last_updated_at"))
    return (updated - created).total_seconds()


def test_400_concurrent_tasks_over_http_and_pubsub_all_complete_exactly_once(service, scripted_llm, redis_client):
    marker = uuid.uuid4().hex[:8]
    http_tasks = [f"load {marker} http [{i}]" for i in range(TASKS_PER_TRIGGER)]
    pubsub_tasks = [f"load {marker} pubsub [{i}]" for i in range(TASKS_PER_TRIGGER)]

    started = time.monotonic()
    asyncio.run(_send_all(http_tasks, pubsub_tasks))
    every_task = set(http_tasks) | set(pubsub_tasks)

    def all_completed():
        runs = _runs_by_task(redis_client, marker)
        if set(runs) != every_task:
            return None
        statuses = {t: service.status(ids[0]) for t, ids in runs.items()}
        done = all(s["runtime_status"] in {"COMPLETED", "FAILED"} for s in statuses.values())
        return (runs, statuses) if done else None

    runs, statuses = wait_for(all_completed, "all 400 runs to finish", timeout_s=600, interval_s=2)
    elapsed = time.monotonic() - started

    assert {t: len(ids) for t, ids in runs.items() if len(ids) != 1} == {}  # none twice
    assert {t: s["runtime_status"] for t, s in statuses.items() if s["runtime_status"] != "COMPLETED"} == {}
    # Each task reached the LLM exactly twice: its answer and its summary.
    calls = {}
    for call in scripted_llm.calls:
        for message in call.messages:
            text = str(message.get("content"))
            for task in (t for t in every_task if t in text):
                calls[task] = calls.get(task, 0) + 1
                break
    assert {t: n for t, n in calls.items() if n != 2} == {}
    durations = sorted(_seconds(s) for s in statuses.values())
    record_figure("400 concurrent tasks", seconds_to_complete_all=round(elapsed, 1),
                  runs_per_second=round(len(every_task) / elapsed, 1),
                  run_p50_s=round(statistics.median(durations), 2),
                  run_p95_s=round(durations[int(0.95 * len(durations)) - 1], 2),
                  llm_calls=len(scripted_llm.calls))


REPLICA_PORTS = {"app": 8002, "sidecar HTTP": 3502, "sidecar metrics": 9092}


def test_runs_in_flight_finish_on_the_survivor_when_a_replica_is_killed(service, scripted_llm, local_stack):
    processes.require_free(REPLICA_PORTS)
    replica_app = ["--app-id", SERVICE_APP_ID, "--resources-path", "./resources", "-p", "8002",
                   "--log-level", "warn", "--metrics-port=9092", "--dapr-http-port=3502",
                   "--", "python", "durable_agent_service.py"]
    argv, env = stack.dapr_run(local_stack, replica_app, service.llm, resources=service.resources,
                               base_env=service.llm_env)
    replica = processes.spawn("replica", argv, env=env)
    try:
        processes.wait_until(lambda: processes.http_ok("http://127.0.0.1:8002/openapi.json")
                             and processes.http_ok("http://127.0.0.1:3502/v1.0/healthz"), "the second replica",
                             process=replica, log=settings.LOG_DIR / "replica.log")
        scripted_llm.set_delay(0.5)  # keep runs in flight while the replica dies
        marker = uuid.uuid4().hex[:8]
        ids = []
        with httpx.Client(timeout=30) as client:
            for i in range(40):  # both replicas start runs; placement spreads their actors
                url = "http://127.0.0.1:8001/run" if i % 2 else "http://127.0.0.1:8002/run"
                ids.append(client.post(url, json={"task": f"replica {marker} {i}"}).json()["instance_id"])
        wait_for(lambda: len(scripted_llm.calls) >= 10, "runs to be in flight", timeout_s=30)

        for process in [replica, *replica.children()]:
            process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        psutil.wait_procs([replica], timeout=10)

        statuses = {i: service.wait_until_done(i, timeout_s=240)["runtime_status"] for i in ids}
        assert set(statuses.values()) == {"COMPLETED"}, statuses
        record_figure("replica killed with 40 runs in flight",
                      kill_to_all_complete_s=round(time.monotonic() - killed_at, 1))
    finally:
        scripted_llm.set_delay(0)
        processes.stop("replica")
