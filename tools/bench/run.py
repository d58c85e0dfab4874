"""`make bench`: what durability costs, measured on the real local stack.

One run of this module starts Redis, placement, scheduler, Zipkin, the
scripted LLM and the service (the README's `dapr run` command), measures,
stops everything, and writes:

    bench/results/latest.json   the raw figures (git keeps the earlier ones)
    images/bench.png            latency, and throughput against concurrency for each LLM latency
    docs/benchmark.md           every figure on the page, rendered from latest.json (tools/bench/report.py)
    a table on standard output

The scripted LLM answers at once (the stack's own cost) or after a delay (a
real model's seconds). For each measurement: runs per second, the most LLM
calls in flight at once, CPU time per run of each process and the ceiling it
implies on this machine (cores / CPU-seconds per run). Then the knobs: the
same load with one setting changed, to price each (docs/benchmark.md).

    python -m tools.bench            # the full benchmark (long: docs/benchmark.md says how long it took)
    python -m tools.bench --smoke    # a few runs of each measurement, to keep this code honest
    python -m tools.bench --page     # measure nothing: redraw docs/benchmark.md from latest.json
    python -m tools.bench --local-model        # also the agent with the local model (LLM=local; make bench LLM=local)
    python -m tools.bench --local-model-only   # that part alone (tools/bench/local_model.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import httpx
import psutil
import redis

from tools.bench import local_model as local_model_bench
from tools.bench.cpu import app_profile, stack_processes
from tools.bench.load import Load
from tools.bench.report import PAGE, draw, print_table, write_page
from tools.stack import commands as stack
from tools.stack.llm import choose_llm
from tools.stack.processes import StackError, rel, stop, stop_dapr_run
from tools.stack.scripted_llm import ScriptedLLM
from tools.stack.services import stop_services, up
from tools.stack.settings import (
    DAPR_AGENTS_VERSION,
    DAPR_CLI_VERSION,
    DAPR_RUNTIME_VERSION,
    LOG_DIR,
    REDIS_PORT,
    ROOT,
    SIDECAR_METRICS_PORT,
    STATE_DIR,
    VENV_BIN,
    ZIPKIN_PORT,
)

RESULTS_DIR = ROOT / "bench" / "results"
PICTURE = ROOT / "images" / "bench.png"


# The README's defaults, and each knob: what changes, how the service starts.
KNOBS = {
    "redis appendfsync everysec": dict(fsync="everysec"),
    "sidecar API logging off": dict(api_logging=False),
    "tracing sampling 0": dict(sampling="0"),
    "sidecar metrics off": dict(metrics=False),
    "no memory summary": dict(variant={"TDA_BENCH_NO_SUMMARY": "1"}),
    "lean: all of these": dict(fsync="everysec", api_logging=False, sampling="0", metrics=False,
                               variant={"TDA_BENCH_NO_SUMMARY": "1"}),
    "lean, keeping the memory summary": dict(fsync="everysec", api_logging=False, sampling="0", metrics=False),
    # What a fix in dapr-agents would give (docs/upstream.md): one DaprClient per process, not one per call.
    "a shared Dapr client": dict(variant={"TDA_BENCH_SHARED_CLIENT": "1"}),
    "lean, with a shared Dapr client": dict(fsync="everysec", api_logging=False, sampling="0", metrics=False,
                                            variant={"TDA_BENCH_NO_SUMMARY": "1", "TDA_BENCH_SHARED_CLIENT": "1"}),
}
SHARED_CLIENT = "a shared Dapr client"
# The knob rows that also get one run's latency at concurrency 1 and the direct calls beside it.
WITH_LATENCY = ("lean", "the README", SHARED_CLIENT)
# The topic's handling: dapr-agents' own consumer against the service's (input_guard.py), same load.
TOPIC_STOCK = "topic: dapr-agents' own consumer (stock)"
TOPIC_FIXED = "topic: the service's consumer (OneRunPerMessage)"
TOPIC_HTTP = "HTTP beside it: as many clients, one run each"


@dataclass
class Plan:
    """How many runs each measurement makes: {(trigger, LLM delay in s): {concurrency: runs}}."""

    warmup: int = 5
    latency_runs: int = 60
    levels: tuple[int, ...] = (1, 8, 32, 64)
    delays: tuple[float, ...] = (0.0, 1.0)
    runs: dict = field(default_factory=lambda: {
        ("http", 0.0): {1: 30, 8: 80, 32: 160, 64: 192}, ("pubsub", 0.0): {1: 12, 8: 32, 32: 64, 64: 128},
        ("http", 1.0): {1: 3, 8: 16, 32: 64, 64: 128}, ("pubsub", 1.0): {1: 3, 8: 16, 32: 64, 64: 128}})
    burst: int = 256  # runs started at once, over each trigger
    knobs: tuple[str, ...] = tuple(KNOBS)
    knob_concurrency: int = 32  # the knobs above: this many clients, instant LLM, knob_runs runs
    knob_runs: int = 128
    # The worker pool's knob: waves of knob_wave runs at once over HTTP with this LLM latency.
    knob_delay: float = 1.0
    knob_wave: int = 64
    pool_knob: bool = True
    # The topic's knob: topic_wave tasks published at once, LLM knob_delay, with dapr-agents' consumer and
    # with the service's. dapr-agents' acknowledges each message when its run ends, one run at a time: past
    # Redis's 60 s processingTimeout, a message waiting its turn would be handed out again and run twice.
    topic_knob: bool = True
    topic_wave: int = 12
    knob_baselines: bool = True  # the defaults measured before and after the knobs
    history_sample: int = 20
    cost_runs: int = 20


SMOKE = Plan(warmup=2, latency_runs=5, levels=(1, 4), delays=(0.0, 0.2),
             runs={("http", 0.0): {1: 3, 4: 8}, ("pubsub", 0.0): {1: 2, 4: 4},
                   ("http", 0.2): {1: 2, 4: 4}, ("pubsub", 0.2): {1: 1, 4: 4}},
             burst=8, knobs=("lean: all of these",), knob_concurrency=4, knob_runs=8, knob_delay=0.2, knob_wave=4,
             pool_knob=False, topic_knob=False, knob_baselines=False, history_sample=3, cost_runs=3)

class Bench:
    """The stack (kept up) and the service (restarted for each knob), with the scripted LLM."""

    def __init__(self, runtime, started: list[str], llm: ScriptedLLM) -> None:
        self.runtime, self.started, self.llm = runtime, started, llm
        self.redis = redis.Redis(port=REDIS_PORT)
        self.first_start_s: float | None = None

    def fresh_zipkin(self) -> None:
        """Zipkin keeps every span in a 256 MB heap; after thousands of runs it spends its CPU collecting
        garbage. Restarted (if we started it) so each group of knobs is measured against an empty one."""
        if "zipkin" in self.started:
            stop("zipkin")
            up(tracing=True)

    def serve(self, api_logging: bool = True, sampling: str = "1", metrics: bool = True, fsync: str = "always",
              variant: dict | None = None, pool: int | None = None) -> Load:
        """(Re)start the service: the README's command, with the knobs given; a Load against it."""
        stop_dapr_run("service")
        app = [arg for arg in stack.SERVICE_APP if api_logging or arg != "--enable-api-logging"]
        variant = dict(variant or {}) | ({"TDA_BENCH_POOL": str(pool)} if pool else {})
        if variant:  # the shipped script, run with the change the knob prices (tools/bench/agent.py)
            app[app.index("--") + 1:] = ["python", "-m", "tools.bench.agent"]
        config = None
        if sampling != "1" or not metrics:  # the CLI's default configuration, with these changed
            config = STATE_DIR / f"bench-config-sampling-{sampling}-metrics-{metrics}.yaml"
            config.write_text("apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprConfig\n"
                              f"spec:\n  tracing:\n    samplingRate: \"{sampling}\"\n    zipkin:\n"
                              f"      endpointAddress: http://localhost:{ZIPKIN_PORT}/api/v2/spans\n"
                              f"  metric:\n    enabled: {str(metrics).lower()}\n")
        env = self.llm.client_env()
        argv, env = stack.dapr_run(self.runtime, app, choose_llm(env), config=config, base_env=env)
        started = time.perf_counter()
        stack.start_service(argv, env | variant, LOG_DIR / "bench-service.log")
        self.first_start_s = self.first_start_s or round(time.perf_counter() - started, 1)
        self.redis.config_set("appendfsync", fsync)
        return Load(self.llm, calls_per_run=1 if variant.get("TDA_BENCH_NO_SUMMARY") else 2)

    def main_figures(self, plan: Plan, step) -> dict:
        load = self.serve()
        results: dict = {}
        step("latency of one run (concurrency 1), in turns with the same LLM calls without durability")
        results["latency"], results["direct"] = load.latency_and_direct(plan.warmup, plan.latency_runs)
        results["durable_over_direct"] = round(results["latency"]["p50_ms"] / results["direct"]["p50_ms"], 1)
        results["throughput"] = {"http": [], "pubsub": []}
        for delay in plan.delays:  # the two doors side by side: HTTP then the topic at each concurrency
            levels = sorted({level for trigger in ("http", "pubsub") for level in plan.runs[(trigger, delay)]})
            for level, trigger in ((level, trigger) for level in levels for trigger in ("http", "pubsub")):
                if (runs := plan.runs[(trigger, delay)].get(level)) is not None:
                    step(f"{trigger}, LLM {delay:g} s, concurrency {level} ({runs} runs)")
                    if trigger == "http" and delay == 0 and level == max(plan.levels):
                        # The app's profile at full load: where its CPU time goes.
                        with app_profile(stack_processes()["app"], STATE_DIR / "bench-app-profile.raw") as profile:
                            row = load.http(level, runs, delay)
                        results["app_profile"] = {"at": f"http, instant LLM, concurrency {level}", **profile}
                    else:
                        row = getattr(load, trigger)(level, runs, delay)
                    results["throughput"][trigger].append(row)
        step(f"{plan.burst} runs at once over HTTP (LLM {plan.knob_delay:g} s) and over pub/sub (instant)")
        results["burst"] = [load.http(plan.burst, plan.burst, plan.knob_delay), load.pubsub(plan.burst, plan.burst, 0)]
        step("where the time goes")
        results["breakdown"] = load.breakdown(plan.history_sample)
        step("cost per run")
        results["cost"] = self.cost(load, plan.cost_runs)
        load.close()
        return results

    def knobs(self, plan: Plan, step) -> list[dict]:
        rows, wave, wave_runs = [], plan.knob_wave, 2 * plan.knob_wave
        self.fresh_zipkin()
        # The defaults first and last: how far they drift is this machine's noise.
        first, last = (["the README's defaults"], ["the README's defaults, again"]) if plan.knob_baselines else ([], [])
        for name in (*first, *plan.knobs, *last):
            step(f"knob: {name}")
            load = self.serve(**KNOBS.get(name, {}))
            load.http(plan.knob_concurrency, plan.knob_concurrency // 2, 0)  # warm-up
            rows.append({"knob": name, **load.http(plan.knob_concurrency, plan.knob_runs, 0)})
            if name.startswith(WITH_LATENCY):  # durable / direct, the two measured side by side
                row = rows[-1]
                row["latency"], row["direct"] = load.latency_and_direct(0, plan.latency_runs)
                row["durable_over_direct"] = round(row["latency"]["p50_ms"] / row["direct"]["p50_ms"], 1)
            if name == SHARED_CLIENT:  # where the app's CPU goes then (after the measurement: py-spy costs)
                with app_profile(stack_processes()["app"], STATE_DIR / "bench-app-profile-shared.raw") as profile:
                    load.http(plan.knob_concurrency, plan.knob_runs // 2, 0)
                rows[-1]["app_profile"] = {"at": f"http, instant LLM, concurrency {plan.knob_concurrency}", **profile}
            load.close()
        if plan.pool_knob:
            self.fresh_zipkin()
            step(f"knob: the worker pool, {wave} runs at once, LLM {plan.knob_delay:g} s")
            for pool, name in ((None, "worker pool of 100 threads (the script)"),
                               (6, "worker pool of 6 threads (the default: CPU count + 4)")):
                load = self.serve(pool=pool)
                rows.append({"knob": name, **load.http(wave, wave_runs, plan.knob_delay)})
                rows.append({"knob": name, **load.http(plan.knob_concurrency, plan.knob_runs, 0)})
                load.close()
        if plan.topic_knob:
            topic = plan.topic_wave
            step(f"knob: the topic's consumer, dapr-agents' and the service's, {topic} published at once, "
                 f"LLM {plan.knob_delay:g} s")
            # Each service gets a warm-up wave first: a message published while the app's fresh subscription
            # stream opens can be left pending until Redis hands it out again 60 s later (docs/upstream.md),
            # which would be timed as the consumer's.
            load = self.serve(variant={"TDA_BENCH_TOPIC_STOCK": "1"})
            load.pubsub(2, 2, 0)
            rows.append({"knob": TOPIC_STOCK, **load.pubsub(topic, topic, plan.knob_delay)})
            load.close()
            load = self.serve()
            load.pubsub(2, 2, 0)
            rows.append({"knob": TOPIC_FIXED, **load.pubsub(topic, topic, plan.knob_delay)})
            rows.append({"knob": TOPIC_HTTP, **load.http(topic, topic, plan.knob_delay)})
            load.close()
        return rows

    def cost(self, load: Load, runs: int) -> dict:
        """Redis commands and bytes, and Conversation API calls, per run (one run at a time)."""
        def commands() -> dict[str, int]:
            return {k.removeprefix("cmdstat_"): v["calls"] for k, v in self.redis.info("commandstats").items()}

        def llm_calls() -> float:
            text = httpx.get(f"http://127.0.0.1:{SIDECAR_METRICS_PORT}/metrics").text
            return metric_total(text, "dapr_component_conversation_count")

        load.fresh_connections()
        before, before_net, before_llm = commands(), self.redis.info("stats")["total_net_input_bytes"], llm_calls()
        for i in range(runs):
            load.run_once(f"cost {i}")
        after, after_net, after_llm = commands(), self.redis.info("stats")["total_net_input_bytes"], llm_calls()
        per_command = {c: round((after[c] - before.get(c, 0)) / runs, 1) for c in after}
        per_command = {c: n for c, n in sorted(per_command.items(), key=lambda kv: -kv[1]) if n > 0}
        return {"runs": runs, "redis_commands_per_run": round(sum(per_command.values()), 1),
                "redis_commands_by_type": per_command,
                "bytes_sent_to_redis_per_run": round((after_net - before_net) / runs),
                "conversation_calls_per_run": round((after_llm - before_llm) / runs, 2)}


def metric_total(text: str, family: str, **labels: str) -> float:
    """The sum of a Prometheus metric family's samples whose labels include `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(family + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def startup(llm_env: dict[str, str]) -> dict:
    """Warm `make run`, split: the Python import, and the run under `dapr run` with the stack already up."""
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


def run_all(plan: Plan, knobs: bool = True, local_model: bool = False) -> dict:
    step = lambda name: print(f"[bench] {name}", flush=True)  # noqa: E731
    llm = ScriptedLLM(port=0).start()  # a port of its own: it never meets the test suite's
    started: list[str] = []
    try:
        stack_started = time.perf_counter()
        # Zipkin runs, as with `make serve`: the sidecar's default configuration traces every run.
        runtime, started = up(tracing=True)
        stack_s = time.perf_counter() - stack_started
        bench = Bench(runtime, started, llm)
        results: dict = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                         "plan": {k: v if k != "runs" else {f"{t} {d:g} s": r for (t, d), r in v.items()}
                                  for k, v in asdict(plan).items()}}
        results |= bench.main_figures(plan, step)
        results["stack_and_service_start_s"] = round(stack_s + bench.first_start_s, 1)
        if knobs:
            try:
                results["knobs"] = bench.knobs(plan, step)
            finally:  # the stack's Redis may be someone else's too: leave it as the README runs it
                bench.redis.config_set("appendfsync", "always")
        stop_dapr_run("service")
        step("start-up")
        results["startup"] = startup(llm.client_env())
        if local_model:  # a real model beside the scripted ones; it writes bench/results/local-model.json too
            results["local_model"] = local_model_bench.run(step)
    finally:
        stop_dapr_run("service")
        stop_services(started)
        llm.stop()
    results["machine"] = {"cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                          "python": platform.python_version(), "platform": platform.platform(),
                          "dapr_runtime": DAPR_RUNTIME_VERSION, "dapr_cli": DAPR_CLI_VERSION,
                          "dapr_agents": DAPR_AGENTS_VERSION}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few runs of each measurement")
    parser.add_argument("--no-knobs", action="store_true", help="skip the knobs (each restarts the service)")
    parser.add_argument("--page", action="store_true", help=f"measure nothing: rewrite {rel(PAGE)}'s figures "
                                                            f"from {rel(RESULTS_DIR / 'latest.json')}")
    parser.add_argument("--local-model", action="store_true",
                        help="also the agent with the local model (scripts/install-local-model.sh first)")
    parser.add_argument("--local-model-only", action="store_true", help="only the agent with the local model")
    args = parser.parse_args(argv)
    if args.page:
        write_page(json.loads((RESULTS_DIR / "latest.json").read_text()))
        print(f"[bench] {rel(PAGE)}: figures written from {rel(RESULTS_DIR / 'latest.json')}")
        return 0
    started = time.perf_counter()
    if args.local_model_only:
        try:
            results = local_model_bench.run(lambda name: print(f"[bench] {name}", flush=True))
        except StackError as exc:
            print(f"[bench] error: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(results, indent=2))
        print(f"\n[bench] {time.perf_counter() - started:.0f} s; figures in {rel(local_model_bench.RESULTS)}")
        return 0
    try:
        results = run_all(SMOKE if args.smoke else Plan(), knobs=not args.no_knobs, local_model=args.local_model)
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
    if not args.smoke:  # a smoke run's few runs are no figures to quote
        write_page(results)
    print(f"\n[bench] {results['bench_wall_s']} s; raw figures in {rel(out_dir / 'latest.json')}, "
          f"picture in {rel(picture)}" + ("" if args.smoke else f", page {rel(PAGE)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
