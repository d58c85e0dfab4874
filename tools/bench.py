"""`make bench`: what durability costs, measured on the real local stack.

The scripted LLM answers instantly, so every figure is the stack's own, not a
model's. One run of this module starts Redis, placement, scheduler, the
scripted LLM and the service (the README's `dapr run` command), measures, stops
everything, and writes:

    bench/results/latest.json   the raw figures (git keeps the earlier ones)
    images/bench.png                                               latency and throughput
    a table on standard output

    python -m tools.bench            # the full benchmark (a few minutes)
    python -m tools.bench --smoke    # a few runs of each measurement, to keep this code honest
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from dapr.ext.workflow import DaprWorkflowClient

from tools.processes import StackError, rel, stop_dapr_run
from tools.scripted_llm import service_with_scripted_llm
from tools.settings import (
    DAPR_AGENTS_VERSION,
    DAPR_CLI_VERSION,
    DAPR_RUNTIME_VERSION,
    REDIS_PORT,
    ROOT,
    SERVICE_APP_ID,
    SERVICE_URL,
    SIDECAR_URL,
    VENV_BIN,
)
from tools.workflows import history, list_instances, sidecar_grpc_port

RESULTS_DIR = ROOT / "bench" / "results"
PICTURE = ROOT / "images" / "bench.png"


@dataclass
class Plan:
    """How many runs each measurement makes."""

    warmup: int = 20
    latency_runs: int = 200
    direct_runs: int = 200
    levels: tuple[int, ...] = (1, 8, 32)
    runs_per_level: dict[int, int] = field(default_factory=lambda: {1: 50, 8: 120, 32: 240})
    history_sample: int = 50
    cost_runs: int = 20


SMOKE = Plan(warmup=2, latency_runs=5, direct_runs=5, levels=(1, 4),
             runs_per_level={1: 4, 4: 8}, history_sample=3, cost_runs=3)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
            "p99_ms": round(percentile(ms, 99), 1), "mean_ms": round(statistics.fmean(ms), 1)}


class Bench:
    """The measurements, against a service that is already running."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.grpc_port = sidecar_grpc_port(SERVICE_APP_ID)
        self.workflows = DaprWorkflowClient(host="127.0.0.1", port=str(self.grpc_port))
        self.http = httpx.Client(base_url=SERVICE_URL, timeout=60)

    def close(self) -> None:
        self.http.close()

    # -- one run -------------------------------------------------------------
    def run_once(self, task: str) -> float:
        """POST /run, then wait for COMPLETED on the workflow engine's own stream (no polling)."""
        started = time.perf_counter()
        instance_id = self.http.post("/run", json={"task": task}).json()["instance_id"]
        state = self.workflows.wait_for_workflow_completion(instance_id, fetch_payloads=False, timeout_in_seconds=120)
        elapsed = time.perf_counter() - started
        if state is None or state.runtime_status.name != "COMPLETED":
            raise RuntimeError(f"run {instance_id} ended {state and state.runtime_status.name}")
        return elapsed

    def latency(self) -> dict:
        for i in range(self.plan.warmup):
            self.run_once(f"warm-up {i}")
        return summary_ms([self.run_once(f"latency {i}") for i in range(self.plan.latency_runs)])

    def direct(self) -> dict:
        """The same LLM work without durability: a run's two Conversation API calls, straight to the sidecar."""
        def converse(text: str) -> None:
            response = httpx.post(f"{SIDECAR_URL}/v1.0-alpha2/conversation/llm-provider/converse", timeout=60,
                                  json={"inputs": [{"messages": [{"ofUser": {"content": [{"text": text}]}}]}]})
            response.raise_for_status()

        samples = []
        for i in range(self.plan.direct_runs):
            started = time.perf_counter()
            converse(f"Write a haiku about programming ({i}).")
            converse("Summarize the following conversation ...")
            samples.append(time.perf_counter() - started)
        return summary_ms(samples)

    # -- throughput ------------------------------------------------------------
    def throughput_http(self, concurrency: int, runs: int) -> dict:
        with ResourceSampler() as sampler, ThreadPoolExecutor(concurrency) as pool:
            started = time.perf_counter()
            samples = list(pool.map(self.run_once, [f"http c{concurrency} {i}" for i in range(runs)]))
            elapsed = time.perf_counter() - started
        return {"concurrency": concurrency, "runs": runs, "runs_per_s": round(runs / elapsed, 2),
                **summary_ms(samples), "cpu": sampler.cpu_share(), "peak_rss_mb": sampler.peak_rss_mb()}

    def throughput_pubsub(self, concurrency: int, runs: int) -> dict:
        before = set(list_instances(self.grpc_port))
        marker = uuid.uuid4().hex[:8]

        async def publish_all() -> None:
            limit = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(base_url=SIDECAR_URL, timeout=60) as client:
                async def publish(i: int) -> None:
                    async with limit:
                        response = await client.post("/v1.0/publish/agent-pubsub/assistant.topic",
                                                     json={"task": f"pubsub {marker} c{concurrency} {i}"})
                        response.raise_for_status()
                await asyncio.gather(*(publish(i) for i in range(runs)))

        with ResourceSampler() as sampler:
            started = time.perf_counter()
            asyncio.run(publish_all())
            new: set[str] = set()
            deadline = time.monotonic() + 300
            while len(new) < runs and time.monotonic() < deadline:
                new = set(list_instances(self.grpc_port)) - before
                time.sleep(0.2)
            durations = []
            for instance_id in new:
                state = self.workflows.wait_for_workflow_completion(instance_id, fetch_payloads=False,
                                                                    timeout_in_seconds=300)
                durations.append((state.last_updated_at - state.created_at).total_seconds())
            elapsed = time.perf_counter() - started
        if len(new) != runs:
            raise RuntimeError(f"{runs} published, {len(new)} runs started")
        return {"concurrency": concurrency, "runs": runs, "runs_per_s": round(runs / elapsed, 2),
                **summary_ms(durations), "cpu": sampler.cpu_share(), "peak_rss_mb": sampler.peak_rss_mb()}

    # -- where the time goes ------------------------------------------------------
    def activity_breakdown(self) -> dict:
        """Mean time from scheduling to completion of each activity, from the runs' workflow histories."""
        per_step: dict[str, list[float]] = {}
        totals = []
        for i in range(self.plan.history_sample):  # one at a time: the cost of a run, not of a queue
            instance_id = self.http.post("/run", json={"task": f"breakdown {i}"}).json()["instance_id"]
            self.workflows.wait_for_workflow_completion(instance_id, fetch_payloads=False, timeout_in_seconds=120)
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

    # -- deterministic cost -----------------------------------------------------------
    def cost_per_run(self, metrics_url: str = "http://127.0.0.1:9090/metrics") -> dict:
        import redis

        client = redis.Redis(port=REDIS_PORT)
        before_cmds, before_net = _commandstats(client), client.info("stats")["total_net_input_bytes"]
        before_llm = metric_total(httpx.get(metrics_url).text, "dapr_component_conversation_count")
        for i in range(self.plan.cost_runs):
            self.run_once(f"cost {i}")
        after_cmds, after_net = _commandstats(client), client.info("stats")["total_net_input_bytes"]
        after_llm = metric_total(httpx.get(metrics_url).text, "dapr_component_conversation_count")
        client.close()
        runs = self.plan.cost_runs
        per_command = {c: round((after_cmds.get(c, 0) - before_cmds.get(c, 0)) / runs, 1) for c in after_cmds}
        per_command = {c: n for c, n in sorted(per_command.items(), key=lambda kv: -kv[1]) if n > 0}
        return {"runs": runs, "redis_commands_per_run": round(sum(per_command.values()), 1),
                "redis_commands_by_type": per_command,
                "bytes_sent_to_redis_per_run": round((after_net - before_net) / runs),
                "conversation_calls_per_run": round((after_llm - before_llm) / runs, 2)}


def _commandstats(client) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in client.info("commandstats").items()}


def metric_total(text: str, family: str, **labels: str) -> float:
    """The sum of a Prometheus metric family's samples whose labels include `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(family + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


class ResourceSampler:
    """Samples CPU and RSS of the stack's processes every 0.5 s while a measurement runs."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.rss: dict[str, float] = {}
        self._stop = threading.Event()

    def _processes(self) -> dict[str, psutil.Process]:
        found = {"bench client and scripted LLM": psutil.Process()}
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if process.info["name"] == "daprd" and SERVICE_APP_ID in cmdline:
                found["daprd"] = process
            elif "durable_agent_service.py" in cmdline and "dapr" not in process.info["name"]:
                found["app (python)"] = process
            elif process.info["name"] in ("redis-server", "scheduler", "placement"):
                found[process.info["name"]] = process
        return found

    def _loop(self) -> None:
        processes = self._processes()
        for process in processes.values():
            process.cpu_percent(None)
        while not self._stop.wait(0.5):
            for name, process in processes.items():
                try:
                    self.cpu[name] = self.cpu.get(name, 0.0) + process.cpu_percent(None) * 0.5
                    self.rss[name] = max(self.rss.get(name, 0.0), process.memory_info().rss / 2**20)
                except psutil.Error:
                    pass

    def __enter__(self) -> ResourceSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_share(self) -> dict[str, float]:
        """CPU seconds used per process during the measurement."""
        return {name: round(seconds / 100, 2) for name, seconds in sorted(self.cpu.items(), key=lambda kv: -kv[1])}

    def peak_rss_mb(self) -> dict[str, float]:
        return {name: round(mb, 1) for name, mb in self.rss.items() if name in ("app (python)", "daprd")}


def startup(llm_env: dict[str, str]) -> dict:
    """Warm `make run`, split: the stack's start, the Python import, and the run under `dapr run`."""
    import_s = float(subprocess.run(
        [str(VENV_BIN / "python"), "-c",
         "import time; t = time.perf_counter(); import dapr_agents; print(time.perf_counter() - t)"],
        capture_output=True, text=True, check=True).stdout)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tools.stack", "run"], cwd=ROOT, env=llm_env,
                            capture_output=True, text=True, timeout=300)
    total = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"make run failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return {"make_run_wall_s": round(total, 2), "import_dapr_agents_s": round(import_s, 2),
            "note": "make run reuses the stack the benchmark started, so this is the app side of a warm run"}


def run_all(plan: Plan) -> dict:
    stack_started = time.perf_counter()
    # Traces off: the figures are the agent's, not Zipkin's.
    with service_with_scripted_llm(tracing=False, log_name="bench-service") as llm:
        stack_s = time.perf_counter() - stack_started
        bench = Bench(plan)
        results: dict = {"started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        step = lambda name: print(f"[bench] {name}", flush=True)  # noqa: E731
        step("latency of one run (concurrency 1)")
        results["latency"] = bench.latency()
        step("the same LLM calls without durability")
        results["direct"] = bench.direct()
        results["durable_over_direct"] = round(results["latency"]["p50_ms"] / results["direct"]["p50_ms"], 1)
        results["throughput"] = {"http": [], "pubsub": []}
        for level in plan.levels:
            step(f"throughput at concurrency {level}")
            results["throughput"]["http"].append(bench.throughput_http(level, plan.runs_per_level[level]))
            results["throughput"]["pubsub"].append(bench.throughput_pubsub(level, plan.runs_per_level[level]))
        step("where the time goes")
        results["breakdown"] = bench.activity_breakdown()
        step("cost per run")
        results["cost"] = bench.cost_per_run()
        bench.close()
        stop_dapr_run("service")
        step("start-up")
        results["startup"] = {"stack_and_service_start_s": round(stack_s, 2), **startup(llm.client_env())}
    results["machine"] = {"cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                          "python": platform.python_version(), "platform": platform.platform(),
                          "dapr_runtime": DAPR_RUNTIME_VERSION, "dapr_cli": DAPR_CLI_VERSION,
                          "dapr_agents": DAPR_AGENTS_VERSION}
    return results


def print_table(r: dict) -> None:
    lat, direct = r["latency"], r["direct"]
    print(f"\nOne run, concurrency 1 ({lat['n']} runs): p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
          f"p99 {lat['p99_ms']} ms")
    print(f"Same two LLM calls, no durability: p50 {direct['p50_ms']} ms "
          f"-> durable/direct = {r['durable_over_direct']}x")
    print(f"\n{'trigger':<8} {'conc.':>5} {'runs':>5} {'runs/s':>8} {'p50 ms':>8} {'p95 ms':>8}  "
          "busiest process (CPU s)")
    for trigger in ("http", "pubsub"):
        for row in r["throughput"][trigger]:
            busiest = next(iter(row["cpu"].items()), ("-", 0))
            print(f"{trigger:<8} {row['concurrency']:>5} {row['runs']:>5} {row['runs_per_s']:>8} "
                  f"{row['p50_ms']:>8} {row['p95_ms']:>8}  {busiest[0]} ({busiest[1]})")
    b = r["breakdown"]
    print(f"\nWhere a run's {b['mean_run_ms']} ms go (mean of {b['runs']}): " +
          ", ".join(f"{k} {v}" for k, v in b["activities_ms"].items()) +
          f", orchestration {b['orchestration_overhead_ms']}")
    c = r["cost"]
    print(f"Per run: {c['redis_commands_per_run']} Redis commands, {c['bytes_sent_to_redis_per_run']} bytes to Redis, "
          f"{c['conversation_calls_per_run']} Conversation API calls")
    top = ", ".join(f"{k} {v}" for k, v in list(c["redis_commands_by_type"].items())[:6])
    print(f"  most frequent: {top}")
    s = r["startup"]
    print(f"Start-up: stack and service {s['stack_and_service_start_s']} s, "
          f"import dapr_agents {s['import_dapr_agents_s']} s, make run (stack already up) {s['make_run_wall_s']} s")


def draw(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    lat = r["latency"]
    left.bar(["p50", "p95", "p99"], [lat["p50_ms"], lat["p95_ms"], lat["p99_ms"]], color="#6b9bd1", label="durable run")
    left.axhline(r["direct"]["p50_ms"], color="#d1826b", linestyle="--", label="same LLM calls, not durable (p50)")
    left.set_ylabel("milliseconds")
    left.set_title(f"One run at concurrency 1 ({lat['n']} runs)")
    left.legend(fontsize=8)
    for trigger, color in (("http", "#6b9bd1"), ("pubsub", "#7fb77e")):
        rows = r["throughput"][trigger]
        right.plot([x["concurrency"] for x in rows], [x["runs_per_s"] for x in rows], marker="o", color=color,
                   label=f"{trigger} runs/s")
        for x in rows:
            right.annotate(f"p95 {x['p95_ms'] / 1000:.1f} s", (x["concurrency"], x["runs_per_s"]),
                           textcoords="offset points", xytext=(4, -12 if trigger == "pubsub" else 6), fontsize=7)
    right.set_xscale("log", base=2)
    levels = [x["concurrency"] for x in r["throughput"]["http"]]
    right.set_xticks(levels, [str(level) for level in levels])
    right.set_ylim(bottom=0)
    right.set_xlabel("concurrent clients")
    right.set_ylabel("completed runs per second")
    right.set_title("Throughput")
    right.legend(fontsize=8)
    machine = r["machine"]
    fig.suptitle(f"tiny-durable-agent, instant scripted LLM - {machine['cores']} cores, Dapr {machine['dapr_runtime']}",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few runs of each measurement")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        results = run_all(SMOKE if args.smoke else Plan())
    except StackError as exc:
        print(f"[bench] error: {exc}", file=sys.stderr)
        return 1
    results["bench_wall_s"] = round(time.perf_counter() - started, 1)
    print_table(results)
    out_dir = RESULTS_DIR / ("smoke" if args.smoke else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    picture = out_dir / "bench.png" if args.smoke else PICTURE
    draw(results, picture)
    print(f"\n[bench] {results['bench_wall_s']} s; raw figures in {rel(out_dir / 'latest.json')}, "
          f"picture in {rel(picture)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
