"""A steady load on the HA stack (tools/ha/cluster.py) for tests/test_ha.py: runs submitted at a fixed
rate over HTTP and pub/sub, spread over the replicas, and how to read their outcome."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from tools.stack.processes import wait_until
from tools.stack.settings import HA_APP_PORTS, HA_HOSTS, HA_SIDECAR_HTTP_PORTS, SERVICE_APP_ID

SUBMIT_ATTEMPTS = 5
SUBMIT_TIMEOUT_S = 90.0  # a POST /run waits while a frozen host holds the service up


@dataclass
class Submission:
    task: str
    trigger: str  # "http" or "pubsub"
    replica: int
    sent_at: float  # wall clock, to compare with the runs' own timestamps
    instance_id: str | None = None
    error: str | None = None
    retries: int = 0
    unanswered: bool = False  # no answer within SUBMIT_TIMEOUT_S: the run may or may not have started


class SteadyLoad:
    """Runs at a steady rate, alternately `POST /run` to a replica's app and a publish to a replica's sidecar,
    round-robin over the replicas in rotation. A replica is taken out of rotation before a fault strikes it,
    as a load balancer's health check would, and once nothing is in flight to it, so each submission has a
    definite answer (a request cut by a crash leaves its client unsure whether the run started)."""

    def __init__(self, marker: str, rate_per_s: float, max_runs: int) -> None:
        self.marker, self.rate_per_s, self.max_runs, self.submissions = marker, rate_per_s, max_runs, []
        self.rotation, self.in_flight = [True] * len(HA_HOSTS), [0] * len(HA_HOSTS)
        self.lock, self.stopping, self.polled = threading.Lock(), threading.Event(), 0
        self.client = httpx.Client(timeout=SUBMIT_TIMEOUT_S)
        self.pool = ThreadPoolExecutor(max_workers=64)  # submissions wait out a stall side by side
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        for n in range(self.max_runs):  # bounded; stop() ends it sooner
            if self.stopping.is_set():
                return
            with self.lock:
                replicas = [i for i, up in enumerate(self.rotation) if up]
                replica = replicas[n % len(replicas)]
                self.in_flight[replica] += 1
                trigger = "http" if n % 2 == 0 else "pubsub"
                submission = Submission(f"ha {self.marker} {trigger} [{n}]", trigger, replica, time.time())
                self.submissions.append(submission)
            self.pool.submit(self._send, submission)
            next_at += 1 / self.rate_per_s
            self.stopping.wait(max(0.0, next_at - time.monotonic()))  # the pace, not a synchronisation

    def _send(self, submission: Submission) -> None:
        """Submit once; a refused connection or a 5xx (no run started: the run would be found twice otherwise,
        which the test checks) is tried again, as a client would. A timeout is not: the run may have started."""
        i = submission.replica
        try:
            for attempt in range(SUBMIT_ATTEMPTS):
                try:
                    response = self._post(submission)
                except httpx.ConnectError:
                    response = None
                if response is not None and response.status_code < 500:
                    break
                submission.retries += 1
                self.stopping.wait(1.0 * (attempt + 1))  # back off
            if response is None:
                raise httpx.ConnectError(f"connection refused {SUBMIT_ATTEMPTS} times")
            response.raise_for_status()
            if submission.trigger == "http":
                submission.instance_id = response.json()["instance_id"]
            else:
                assert response.status_code == 204, response.text
        except httpx.TimeoutException as exc:
            submission.unanswered, submission.error = True, f"no answer within {SUBMIT_TIMEOUT_S:.0f} s: {exc!r}"
        except Exception as exc:  # noqa: BLE001 - every failure is kept and asserted on
            submission.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self.lock:
                self.in_flight[i] -= 1

    def _post(self, submission: Submission) -> httpx.Response:
        i = submission.replica
        if submission.trigger == "http":
            return self.client.post(f"http://127.0.0.1:{HA_APP_PORTS[i]}/run", json={"task": submission.task})
        return self.client.post(f"http://{HA_HOSTS[i]}:{HA_SIDECAR_HTTP_PORTS[i]}/v1.0/publish/agent-pubsub/"
                                "assistant.topic", json={"task": submission.task})

    def take_out(self, replica: int) -> None:
        with self.lock:
            self.rotation[replica] = False
        wait_until(lambda: self.in_flight[replica] == 0, f"submissions to replica {replica} to finish",
                   timeout_s=SUBMIT_TIMEOUT_S + 10)

    def put_back(self, replica: int) -> None:
        with self.lock:
            self.rotation[replica] = True

    def status(self, instance_id: str) -> dict | None:
        """A run's status from a replica in rotation (a frozen host would not answer)."""
        replica = next(i for i, up in enumerate(self.rotation) if up)
        try:
            response = self.client.get(f"http://127.0.0.1:{HA_APP_PORTS[replica]}/run/{instance_id}", timeout=5)
        except httpx.HTTPError:
            return None  # stalled: asked again at the next poll
        return response.json() if response.status_code == 200 else None

    def a_run_completed_since(self, since: float, seen_done: set[str]) -> bool:
        """Whether a run sent after `since` has completed: the service serves new runs. A few HTTP runs not yet
        seen done are asked in turn, so that runs stuck on a faulty host do not hide the others."""
        pending = [s.instance_id for s in list(self.submissions)
                   if s.sent_at > since and s.instance_id and s.instance_id not in seen_done]
        self.polled += 4
        for instance_id in [pending[(self.polled + k) % len(pending)] for k in range(min(4, len(pending)))]:
            status = self.status(instance_id)
            if status and status["runtime_status"] == "COMPLETED":
                seen_done.add(instance_id)
                return True
        return False

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.pool.shutdown(wait=True)


def epoch(timestamp: str) -> float:
    """A run's timestamp (UTC, as the sidecar gives it) as seconds since the epoch."""
    moment = datetime.fromisoformat(timestamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def runs_by_task(redis_client, marker: str) -> dict[str, list[str]]:
    """task -> the ids of the workflow instances whose conversation starts with it (the agent's state in Redis)."""
    runs: dict[str, list[str]] = {}
    for key in redis_client.scan_iter(match=f"{SERVICE_APP_ID}||assistant:_workflow_*", count=1000):
        data = redis_client.hget(key, "data") or ""
        if marker in data:
            runs.setdefault(json.loads(data)["messages"][0]["content"], []).append(key.rsplit("_", 1)[1])
    return runs
