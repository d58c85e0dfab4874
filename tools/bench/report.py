"""`make bench`'s table and picture, from the figures tools/bench/run.py measured."""

from __future__ import annotations

from pathlib import Path

from tools.bench.cpu import STACK


def _cpu(row: dict) -> str:
    per = row["cpu_ms_per_run"]
    return ", ".join(f"{name} {per[name]}" for name in STACK)


def print_table(r: dict) -> None:
    lat, direct = r["latency"], r["direct"]
    print(f"\nOne run, concurrency 1 ({lat['n']} runs): p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
          f"p99 {lat['p99_ms']} ms")
    print(f"Same two LLM calls, no durability: p50 {direct['p50_ms']} ms "
          f"-> durable/direct = {r['durable_over_direct']}x")
    print(f"\n{'trigger':<7} {'LLM s':>5} {'conc.':>5} {'runs':>5} {'runs/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'LLM in flight':>13} {'CPU ms/run':>10} {'ceiling':>8} {'of it':>6} {'app-bound':>9} {'load':>5}")
    for row in [*r["throughput"]["http"], *r["throughput"]["pubsub"], *r["burst"]]:
        print(f"{row['trigger']:<7} {row['llm_delay_s']:>5g} {row['concurrency']:>5} {row['runs']:>5} "
              f"{row['runs_per_s']:>7} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['peak_llm_calls_in_flight']:>13} "
              f"{row['stack_cpu_ms_per_run']:>10} {row['ceiling_runs_per_s']:>8} {row['fraction_of_ceiling']:>6} "
              f"{row['app_bound_runs_per_s']:>9} {row['load_average_1min']:>5}")
    for row in r.get("local_model", {}).get("throughput", []):  # make bench LLM=local: a real model, same columns
        print(f"{'http':<7} {'model':>5} {row['concurrency']:>5} {row['runs']:>5} {row['runs_per_s']:>7} "
              f"{row['p50_ms']:>8} {row['p95_ms']:>8} {'':>13} {sum(row['cpu_ms_per_run'].values()):>10.1f} "
              f"{'':>8} {'':>6} {'':>9} {row['load_average_1min']:>5}   the model: "
              f"{row['model_share_of_run_time']:.0%} of each run's time, {row['model_share_of_cpu']:.0%} of the CPU")
    print("(ceiling: cores / CPU-seconds per run of the whole stack; app-bound: 1 / the app's CPU-seconds per run,\n"
          " the most one Python process can do, as its GIL lets it use one core; load: the machine's 1-minute load\n"
          " average at the end, which other work on the machine raises)")
    for row in r["burst"]:
        print(f"{row['runs']} at once over {row['trigger']}: each ran once (none lost, none twice); "
              f"peak RSS {row['peak_rss_mb']} MB")
    top = max(r["throughput"]["http"], key=lambda row: (row["llm_delay_s"] == 0, row["concurrency"] == 32))
    print(f"\nCPU ms per run, http at concurrency {top['concurrency']} (LLM {top['llm_delay_s']:g} s): {_cpu(top)}; "
          f"{top['stack_cpu_ms_per_run']} in all -> ceiling {top['ceiling_runs_per_s']} runs/s on "
          f"{r['machine']['cores']} cores; the bench client and scripted LLM took "
          f"{top['cpu_ms_per_run']['bench client and scripted LLM']} more")
    profile = r.get("app_profile", {})
    if "share" in profile:
        print(f"The app's Python time ({profile['at']}, {profile['samples']} samples): " +
              ", ".join(f"{name} {share:.0%}" for name, share in profile["share"].items()))
    if r.get("knobs"):
        print(f"\n{'knob':<56} {'conc.':>5} {'LLM s':>5} {'runs/s':>7} {'in flight':>9} {'CPU ms/run':>10} "
              f"{'ceiling':>8} {'of it':>6} {'load':>5}")
        for row in r["knobs"]:
            print(f"{row['knob'][:56]:<56} {row['concurrency']:>5} {row['llm_delay_s']:>5g} {row['runs_per_s']:>7} "
                  f"{row['peak_llm_calls_in_flight']:>9} {row['stack_cpu_ms_per_run']:>10} "
                  f"{row['ceiling_runs_per_s']:>8} {row['fraction_of_ceiling']:>6} {row['load_average_1min']:>5}   "
                  f"{_cpu(row)}")
            if "latency" in row:
                print(f"{'':<56} one run at concurrency 1: p50 {row['latency']['p50_ms']} ms")
    b = r["breakdown"]
    print(f"\nWhere a run's {b['mean_run_ms']} ms go (mean of {b['runs']}): " +
          ", ".join(f"{k} {v}" for k, v in b["activities_ms"].items()) +
          f", orchestration {b['orchestration_overhead_ms']}")
    c = r["cost"]
    print(f"Per run: {c['redis_commands_per_run']} Redis commands, {c['bytes_sent_to_redis_per_run']} bytes to Redis, "
          f"{c['conversation_calls_per_run']} Conversation API calls")
    print("  most frequent: " + ", ".join(f"{k} {v}" for k, v in list(c["redis_commands_by_type"].items())[:6]))
    s = r["startup"]
    print(f"Start-up: stack and service {r['stack_and_service_start_s']} s, "
          f"import dapr_agents {s['import_dapr_agents_s']} s, make run (stack already up) {s['make_run_wall_s']} s")


COLORS = {("http", 0): "#6b9bd1", ("pubsub", 0): "#7fb77e", ("http", 1): "#2f5f98", ("pubsub", 1): "#3d7a3c"}


def draw(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1, 1.6]})
    lat = r["latency"]
    left.bar(["p50", "p95", "p99"], [lat["p50_ms"], lat["p95_ms"], lat["p99_ms"]], color="#6b9bd1", label="durable run")
    left.axhline(r["direct"]["p50_ms"], color="#d1826b", linestyle="--", label="same LLM calls, not durable (p50)")
    left.set_ylabel("milliseconds")
    left.set_title(f"One run at concurrency 1, instant LLM ({lat['n']} runs)", fontsize=10)
    left.legend(fontsize=8)
    for trigger in ("http", "pubsub"):
        for delay in sorted({row["llm_delay_s"] for row in r["throughput"][trigger]}):
            rows = [row for row in r["throughput"][trigger] if row["llm_delay_s"] == delay]
            style = "-" if delay == 0 else "--"
            right.plot([x["concurrency"] for x in rows], [x["runs_per_s"] for x in rows], style, marker="o",
                       color=COLORS[(trigger, 0 if delay == 0 else 1)], label=f"{trigger}, LLM {delay:g} s")
            for x in rows:
                right.annotate(f"{x['peak_llm_calls_in_flight']}", (x["concurrency"], x["runs_per_s"]),
                               textcoords="offset points", xytext=(4, 4), fontsize=7)
    instant = [row for row in r["throughput"]["http"] if row["llm_delay_s"] == 0]
    right.plot([x["concurrency"] for x in instant], [x["ceiling_runs_per_s"] for x in instant], ":", color="grey",
               label="ceiling: cores / CPU-s per run")
    right.set_xscale("log", base=2)
    levels = sorted({x["concurrency"] for x in r["throughput"]["http"]})
    right.set_xticks(levels, [str(level) for level in levels])
    right.set_ylim(bottom=0)
    right.set_xlabel("runs in flight (HTTP: clients; pub/sub: tasks published at once)")
    right.set_ylabel("completed runs per second")
    right.set_title("Throughput (numbers: most LLM calls in flight at once)", fontsize=10)
    right.legend(fontsize=8)
    machine = r["machine"]
    fig.suptitle(f"tiny-durable-agent, scripted LLM - {machine['cores']} cores, Dapr {machine['dapr_runtime']}, "
                 f"dapr-agents {machine['dapr_agents']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
