"""The load `make bench` puts on a running service, and what it reads back.

Runs go in over `POST /run` (each client waits for its run on the workflow
engine's completion stream, then starts the next) or over the topic (a wave
of runs published at once, the next wave once all are done). Every run is
counted at the scripted LLM, which sees each task's two calls: the answer and
the memory summary; so a run lost or run twice does not go unnoticed.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from dapr.ext.workflow import DaprWorkflowClient

from tools.bench.cpu import ResourceMeter
from tools.runs.workflows import history, sidecar_grpc_port
from tools.stack.scripted_llm import ScriptedLLM
from tools.stack.settings import SERVICE_APP_ID, SERVICE_URL, SIDECAR_URL

TOPIC_PATH = "/v1.0/publish/agent-pubsub/assistant.topic"
TASK_TAG = re.compile(r"\[bench ([0-9a-f]{8}) (\d+)\]")
RUN_TIMEOUT_S = 300


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
            "p99_ms": round(percentile(ms, 99), 1), "mean_ms": round(statistics.fmean(ms), 1)}


class CallCounter:
    """Answered LLM calls per bench task, read incrementally from the scripted LLM's call log."""

    def __init__(self, llm: ScriptedLLM, marker: str) -> None:
        self.llm, self.marker = llm, marker
        self.answered: dict[int, int] = {}
        self.last_answer_at: dict[int, float] = {}
        self._seen = 0
        self._pending: list = []

    def update(self) -> dict[int, int]:
        calls = self.llm.calls[self._seen:]
        self._seen += len(calls)
        waiting = []
        for call in self._pending + calls:
            if not call.answered_status:
                waiting.append(call)
                continue
            for message in call.messages:
                match = TASK_TAG.search(str(message.get("content")))
                if match and match.group(1) == self.marker:
                    task = int(match.group(2))
                    self.answered[task] = self.answered.get(task, 0) + 1
                    self.last_answer_at[task] = max(self.last_answer_at.get(task, 0.0), call.answered_at)
                    break
        self._pending = waiting
        return self.answered


class Load:
    """The load generators, against the service that is running now."""

    def __init__(self, llm: ScriptedLLM, calls_per_run: int = 2) -> None:
        self.llm, self.calls_per_run = llm, calls_per_run
        self.grpc_port = sidecar_grpc_port(SERVICE_APP_ID)
        self.workflows = DaprWorkflowClient(host="127.0.0.1", port=str(self.grpc_port))
        self.client = self._http_client()

    @staticmethod
    def _http_client() -> httpx.Client:
        return httpx.Client(base_url=SERVICE_URL, timeout=120, limits=httpx.Limits(max_connections=300))

    def fresh_connections(self) -> None:
        """Connections of its own for the next measurement. uvicorn closes a connection idle for 5 s, and one
        the pool reuses at that moment fails the request (connection reset): after a pub/sub measurement,
        the HTTP clients' connections have been idle that long."""
        self.client.close()
        self.client = self._http_client()

    def close(self) -> None:
        self.client.close()

    # -- one run -------------------------------------------------------------------
    def start(self, task: str) -> str:
        response = self.client.post("/run", json={"task": task})
        response.raise_for_status()
        return response.json()["instance_id"]

    def wait(self, instance_id: str) -> None:
        state = self.workflows.wait_for_workflow_completion(instance_id, fetch_payloads=False,
                                                            timeout_in_seconds=RUN_TIMEOUT_S)
        if state is None or state.runtime_status.name != "COMPLETED":
            raise RuntimeError(f"run {instance_id} ended {state and state.runtime_status.name}")

    def run_once(self, task: str) -> float:
        """POST /run, then wait for COMPLETED on the workflow engine's own stream (no polling)."""
        started = time.perf_counter()
        self.wait(self.start(task))
        return time.perf_counter() - started

    def latency_and_direct(self, warmup: int, runs: int) -> tuple[dict, dict]:
        """One run at a time, and the same LLM work without durability (a run's two Conversation API calls
        straight to the sidecar), taken in turns: on a shared machine the load moves, and each durable run
        and its direct pair meet the same moment of it."""
        def converse(text: str) -> None:
            response = direct.post("/v1.0-alpha2/conversation/llm-provider/converse",
                                   json={"inputs": [{"messages": [{"ofUser": {"content": [{"text": text}]}}]}]})
            response.raise_for_status()

        self.fresh_connections()
        for i in range(warmup):
            self.run_once(f"warm-up {i}")
        durable, direct_s = [], []
        # One client kept open, as the durable runs' own: a client per call would time this process building
        # TLS contexts, which a loaded machine makes several times slower than the calls themselves.
        with httpx.Client(base_url=SIDECAR_URL, timeout=60) as direct:
            for i in range(runs):
                durable.append(self.run_once(f"latency {i}"))
                started = time.perf_counter()
                converse(f"Write a haiku about programming ({i}).")
                converse("Summarize the following conversation ...")
                direct_s.append(time.perf_counter() - started)
        return summary_ms(durable), summary_ms(direct_s)

    # -- throughput ------------------------------------------------------------------
    def http(self, concurrency: int, runs: int, delay_s: float) -> dict:
        """`concurrency` clients, each starting a run and waiting for it to complete, `runs` in all."""
        marker = uuid.uuid4().hex[:8]
        self.llm.set_delay(delay_s)
        self.llm.reset_peak()
        self.fresh_connections()
        with ResourceMeter() as meter, ThreadPoolExecutor(concurrency) as pool:
            started = time.perf_counter()
            samples = list(pool.map(self.run_once, [f"http c{concurrency} [bench {marker} {i}]" for i in range(runs)]))
            elapsed = time.perf_counter() - started
        self._check_each_ran_once(marker, runs)
        return self._row("http", concurrency, runs, delay_s, elapsed, samples, meter)

    def pubsub(self, concurrency: int, runs: int, delay_s: float) -> dict:
        """Waves of `concurrency` tasks published at once; the next wave when all of a wave are done.

        A run counts as done when the LLM has answered its last call (its summary), one short activity
        before the workflow ends: the workflow engine cannot list a topic's runs cheaply once Redis
        holds thousands of earlier ones, and the LLM sees every run's words."""
        marker = uuid.uuid4().hex[:8]
        published: dict[int, float] = {}
        self.llm.set_delay(delay_s)
        self.llm.reset_peak()
        counter = CallCounter(self.llm, marker)
        with ResourceMeter() as meter, httpx.Client(base_url=SIDECAR_URL, timeout=60) as client:
            started = time.perf_counter()
            for first in range(0, runs, concurrency):
                wave = range(first, min(runs, first + concurrency))
                for i in wave:
                    published[i] = time.monotonic()
                    client.post(TOPIC_PATH, json={"task": f"pubsub c{concurrency} [bench {marker} {i}]"}
                                ).raise_for_status()
                self._wait_for(lambda w=wave: all(counter.update().get(i, 0) >= self.calls_per_run for i in w),
                               f"pub/sub wave {first}-{wave[-1]}")
            elapsed = time.perf_counter() - started
        durations = [counter.last_answer_at[i] - published[i] for i in range(runs)]
        self._check_each_ran_once(marker, runs)
        return self._row("pubsub", concurrency, runs, delay_s, elapsed, durations, meter)

    def _row(self, trigger: str, concurrency: int, runs: int, delay_s: float, elapsed: float,
             samples: list[float], meter: ResourceMeter) -> dict:
        cost = meter.per_run(runs)
        rate = runs / elapsed
        return {"trigger": trigger, "llm_delay_s": delay_s, "concurrency": concurrency, "runs": runs,
                "runs_per_s": round(rate, 2), **summary_ms(samples),
                "peak_llm_calls_in_flight": self.llm.peak_in_flight,
                **cost, "fraction_of_ceiling": round(rate / cost["ceiling_runs_per_s"], 2)}

    def _check_each_ran_once(self, marker: str, runs: int) -> None:
        """Each task reached the LLM exactly `calls_per_run` times: none lost, none run twice."""
        counter = CallCounter(self.llm, marker)
        self._wait_for(lambda: len(counter.update()) >= runs, "every task's LLM calls", timeout_s=30)
        wrong = {i: n for i, n in counter.update().items() if n != self.calls_per_run}
        missing = sorted(set(range(runs)) - set(counter.answered))
        if wrong or missing:
            raise RuntimeError(f"runs lost or repeated: calls per task {wrong}, tasks never seen {missing[:10]}")

    @staticmethod
    def _wait_for(check, what: str, timeout_s: float = RUN_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.05)

    # -- where the time goes ---------------------------------------------------------------
    def breakdown(self, runs: int) -> dict:
        """Mean time from scheduling to completion of each activity, from the runs' workflow histories."""
        per_step: dict[str, list[float]] = {}
        totals = []
        self.fresh_connections()
        for i in range(runs):  # one at a time: the cost of a run, not of a queue
            instance_id = self.start(f"breakdown {i}")
            self.wait(instance_id)
            rows = history(instance_id, self.grpc_port)
            scheduled = {}
            for row in rows:
                if row["type"] == "taskScheduled":
                    scheduled[row["name"]] = row["elapsed_ms"]
                elif row["type"] == "taskCompleted" and row["name"] in scheduled:
                    step = row["name"].rsplit(".", 1)[-1]
                    per_step.setdefault(step, []).append(row["elapsed_ms"] - scheduled[row["name"]])
            totals.append(rows[-1]["elapsed_ms"])
        steps = {step: round(statistics.fmean(ms), 1) for step, ms in per_step.items()}
        total = statistics.fmean(totals)
        return {"runs": len(totals), "mean_run_ms": round(total, 1), "activities_ms": steps,
                "orchestration_overhead_ms": round(total - sum(steps.values()), 1)}
