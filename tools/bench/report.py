"""`make bench`'s table, picture and page (docs/benchmark.md), from the figures tools/bench/run.py measured."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tools.bench.cpu import CLIENT, STACK
from tools.stack.settings import ROOT


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
    top = cpu_row(r)
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
                direct = (f"; the direct calls p50 {row['direct']['p50_ms']} ms -> durable/direct "
                          f"{row['durable_over_direct']}x" if "direct" in row else "")
                print(f"{'':<56} one run at concurrency 1: p50 {row['latency']['p50_ms']} ms{direct}")
            if "share" in row.get("app_profile", {}):
                print(f"{'':<56} the app's Python time: " + ", ".join(
                    f"{name[:40]} {share:.0%}" for name, share in list(row["app_profile"]["share"].items())[:3]))
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


# -- docs/benchmark.md -----------------------------------------------------------------------------
# Every figure of the page sits in a block between two comment lines, rendered from the results
# (bench/results/latest.json) by the functions of PAGE_BLOCKS: `make bench` rewrites them after
# measuring, `python -m tools.bench --page` from the committed file, and
# tests/test_docs_figures.py fails when the page shows anything else.
PAGE = ROOT / "docs" / "benchmark.md"
RESULTS = "bench/results/latest.json"
# What the knobs are measured against: CPU ms per run, and the share of the ceiling worth reaching.
GOALS_MS = {"with the README's defaults": ("the README's defaults", 100), "lean": ("lean: all of these", 70)}
GOAL_FRACTION_OF_CEILING = 0.9
SHOWN_NAME = {"redis": "Redis", "zipkin": "Zipkin"}


def _llm(delay: float) -> str:
    return "instant LLM" if not delay else f"{delay:g} s LLM"


def _rows(r: dict, trigger: str, delay: float) -> list[dict]:
    return [row for row in r["throughput"][trigger] if row["llm_delay_s"] == delay]


def _slashed(values) -> str:
    return " / ".join(str(value) for value in values)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _all_rows(r: dict) -> list[dict]:
    return [*r["throughput"]["http"], *r["throughput"]["pubsub"], *r["burst"], *r.get("knobs", [])]


def cpu_row(r: dict) -> dict:
    """The row whose CPU the page and the table break down: HTTP, instant LLM, at the knobs' concurrency."""
    instant = _rows(r, "http", 0)
    return next((row for row in instant if row["concurrency"] == r["plan"]["knob_concurrency"]), instant[-1])


def _knob_rows(r: dict, prefix: str, delay: float | None = None) -> list[dict]:
    return [row for row in r.get("knobs", []) if row["knob"].startswith(prefix)
            and (delay is None or row["llm_delay_s"] == delay)]


def _not_measured(what: str) -> str:
    return f"{what}: not measured in this run (the bench ran without its knobs)."


def page_machine(r: dict) -> str:
    cores, loads = r["machine"]["cores"], [row["load_average_1min"] for row in _all_rows(r)]
    text = (f"The run below, started {r['started_at']}, took {r['bench_wall_s']:.0f} s on {cores} cores, with "
            f"Dapr {r['machine']['dapr_runtime']} and dapr-agents {r['machine']['dapr_agents']}; the machine's "
            f"1-minute load average stood between {min(loads)} and {max(loads)} (each row of the JSON has it).")
    if max(loads) > cores:
        text += (" A load above the number of cores means work waited for a core (the stack's own and any "
                 "other), so each process got less than a core and CPU time per run is inflated by the "
                 "contention: **read these figures as a floor.**")
    return text + (" Comparisons within one run hold better than the absolute figures, and the README's "
                   "defaults, measured before and after the knobs, show how far the noise goes.")


def page_worker_pool(r: dict) -> str:
    plan = r["plan"]
    rows = sorted(_knob_rows(r, "worker pool", plan["knob_delay"]), key=lambda row: "default" not in row["knob"])
    if not rows:
        return _not_measured("The worker pool's knob")
    table = _table([f"{plan['knob_wave']} runs at once over HTTP, {_llm(plan['knob_delay'])}", "runs/s",
                    "LLM calls in flight at most"],
                   [[row["knob"], row["runs_per_s"], row["peak_llm_calls_in_flight"]] for row in rows])
    top = max(plan["levels"])
    slow = next(row for row in _rows(r, "http", max(plan["delays"])) if row["concurrency"] == top)
    fast = next(row for row in _rows(r, "http", 0) if row["concurrency"] == top)
    return (f"{table}\n\nIn the main measurements, {top} HTTP clients with the {_llm(slow['llm_delay_s'])} completed "
            f"{slow['runs_per_s']} runs/s, {slow['runs_per_s'] / fast['runs_per_s']:.2f} of the "
            f"{fast['runs_per_s']} with the instant LLM in the same run, with up to "
            f"{slow['peak_llm_calls_in_flight']} LLM calls in flight.")


def page_burst(r: dict) -> str:
    http, pubsub = r["burst"]
    peak = {name: max(row["peak_rss_mb"][name] for row in r["burst"]) for name in ("app", "daprd")}
    return (f"{http['runs']} runs started at once, over HTTP with the {_llm(http['llm_delay_s'])} and over pub/sub "
            f"with the {_llm(pubsub['llm_delay_s'])}: each ran exactly once (the bench stops otherwise: every HTTP "
            "run must end COMPLETED in the workflow engine, and every task, from either trigger, reach the LLM "
            f"exactly twice: its answer and its summary). Peak RSS: app {peak['app']} MB, daprd {peak['daprd']} MB.")


def _level(rows: list[dict], concurrency: int) -> dict | None:
    return next((row for row in rows if row["concurrency"] == concurrency), None)


def page_doors(r: dict) -> str:
    """HTTP and the topic, measured one after the other at each concurrency, each LLM latency."""
    table, ratios = [], {}
    for delay in r["plan"]["delays"]:
        http, topic = _rows(r, "http", delay), _rows(r, "pubsub", delay)
        for level in sorted({row["concurrency"] for row in http + topic}):
            h, t = _level(http, level), _level(topic, level)
            if h is None or t is None:
                continue
            ratios[(delay, level)] = t["runs_per_s"] / h["runs_per_s"]
            table.append([_llm(delay), level, h["runs_per_s"], t["runs_per_s"], f"{ratios[(delay, level)]:.2f}",
                          f"{h['peak_llm_calls_in_flight']} / {t['peak_llm_calls_in_flight']}"])
    if not ratios:
        return "The two doors were not measured side by side in this run."
    rendered = _table(["LLM", "at once", "HTTP runs/s", "topic runs/s", "topic / HTTP",
                       "LLM calls in flight at most, HTTP / topic"], table)
    slow, top = max(r["plan"]["delays"]), max(level for _, level in ratios)
    parts = []
    if (slow, top) in ratios:
        t = _level(_rows(r, "pubsub", slow), top)
        h = _level(_rows(r, "http", slow), top)
        parts.append(f"With the {_llm(slow)} and {top} tasks at once, the topic completed "
                     f"{ratios[(slow, top)]:.2f} times the runs per second of `POST /run` measured beside it, with "
                     f"up to {t['peak_llm_calls_in_flight']} LLM calls in flight ({h['peak_llm_calls_in_flight']} "
                     "for HTTP)")
    instant = [ratio for (delay, _), ratio in ratios.items() if delay == 0]
    if instant:
        parts.append(f"with the instant LLM, where the stack's CPU is the limit, the topic reached "
                     f"{min(instant):.2f} to {max(instant):.2f} times HTTP's rate")
    return (f"{rendered}\n\nHTTP: that many clients, each starting a run and waiting for it; the topic: that many "
            "tasks published at once, the next wave when all are done. " + "; ".join(parts) + ".")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def page_shared_client(r: dict) -> str:
    """The knob 'a shared Dapr client' against the README's defaults measured before and after it."""
    by_name = {row["knob"]: row for row in r.get("knobs", [])}
    defaults = [row for name, row in by_name.items() if name.startswith("the README's defaults")]
    shared = by_name.get("a shared Dapr client")
    if shared is None or not defaults:
        return _not_measured("The shared Dapr client")
    rows = [*defaults[:1], shared, *defaults[1:]]
    lean, lean_shared = by_name.get("lean: all of these"), by_name.get("lean, with a shared Dapr client")
    rows += [row for row in (lean, lean_shared) if row is not None]
    table = _table(["service", "CPU ms per run", "app", "daprd", "runs/s", "one run, p50 ms", "direct, p50 ms",
                    "durable / direct"],
                   [[row["knob"], _cpu_ms(row), row["cpu_ms_per_run"]["app"], row["cpu_ms_per_run"]["daprd"],
                     row["runs_per_s"], row.get("latency", {}).get("p50_ms", ""),
                     row.get("direct", {}).get("p50_ms", ""),
                     f"{row['durable_over_direct']}x" if "durable_over_direct" in row else ""] for row in rows])
    stack, app = (_mean(row[key] if key else row["cpu_ms_per_run"]["app"] for row in defaults)
                  for key in ("stack_cpu_ms_per_run", None))
    text = (f"{table}\n\nThe same load as the knobs below ({r['plan']['knob_concurrency']} clients, instant LLM), "
            "the defaults measured before and after. With one shared client, a run cost "
            f"{_cpu_ms(shared) / stack:.2f} of the defaults' CPU (mean of the two), the app's share "
            f"{shared['cpu_ms_per_run']['app'] / app:.2f} of theirs")
    if "durable_over_direct" in shared and all("durable_over_direct" in row for row in defaults):
        text += (f"; durable / direct went from {_slashed(row['durable_over_direct'] for row in defaults)}x to "
                 f"{shared['durable_over_direct']}x")
    if lean and lean_shared:
        text += f"; lean, the shared client took a run to {_cpu_ms(lean_shared) / _cpu_ms(lean):.2f} of lean's CPU"
    text += "."
    profile, before = shared.get("app_profile", {}), r.get("app_profile", {})
    key = next((name for name in profile.get("share", {}) if name.startswith("a new DaprClient")), None)
    if key and key in before.get("share", {}):
        text += (f" In the app's profile, building clients went from {before['share'][key]:.0%} of its Python time "
                 f"({before['at']}) to {profile['share'][key]:.0%} ({profile['at']}, with the shared client).")
    return text


def page_topic_consumer(r: dict) -> str:
    """The topic with dapr-agents' own consumer against the service's, the same load one after the other."""
    by_name = {row["knob"]: row for row in r.get("knobs", [])}
    stock = next((row for name, row in by_name.items() if name.startswith("topic: dapr-agents")), None)
    fixed = next((row for name, row in by_name.items() if name.startswith("topic: the service's")), None)
    http = next((row for name, row in by_name.items() if name.startswith("HTTP beside it")), None)
    if stock is None or fixed is None:
        return _not_measured("The topic's two consumers")
    rows = [row for row in (stock, fixed, http) if row is not None]
    table = _table([f"{stock['concurrency']} tasks at once, {_llm(stock['llm_delay_s'])}", "runs/s",
                    "LLM calls in flight at most", "p50 ms", "CPU ms per run"],
                   [[row["knob"], row["runs_per_s"], row["peak_llm_calls_in_flight"], row["p50_ms"], _cpu_ms(row)]
                    for row in rows])
    text = (f"{table}\n\nThe service's consumer completed {fixed['runs_per_s'] / stock['runs_per_s']:.1f} times "
            f"the runs per second of dapr-agents' own, with {fixed['peak_llm_calls_in_flight']} LLM calls in flight "
            f"at most against {stock['peak_llm_calls_in_flight']}")
    if http is not None:
        text += f"; it reached {fixed['runs_per_s'] / http['runs_per_s']:.2f} of HTTP's rate beside it"
    return text + "."


def page_figures(r: dict) -> str:
    plan, lat, direct, cost = r["plan"], r["latency"], r["direct"], r["cost"]
    rows = [[f"one run, `POST /run` until COMPLETED, concurrency 1 ({lat['n']} runs)",
             f"p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms"],
            ["the same two Conversation API calls sent straight to the sidecar, in turns with those runs",
             f"p50 {direct['p50_ms']} ms"],
            ["**durable / direct**", f"**{r['durable_over_direct']}x**"]]
    for delay in plan["delays"]:
        for trigger in ("http", "pubsub"):
            found = _rows(r, trigger, delay)
            levels = _slashed(row["concurrency"] for row in found)
            what = f"concurrency {levels}" if trigger == "http" else f"{levels} published at once"
            value = f"{_slashed(row['runs_per_s'] for row in found)} runs/s"
            if delay:
                value += f"; at most {_slashed(row['peak_llm_calls_in_flight'] for row in found)} LLM calls in flight"
            rows.append([f"{trigger.replace('pubsub', 'pub/sub')}, {_llm(delay)}, {what}", value])
    most = ", ".join(f"{name} {n}" for name, n in list(cost["redis_commands_by_type"].items())[:3])
    rows += [["Redis commands per run", f"{cost['redis_commands_per_run']} (most: {most})"],
             ["Conversation API calls per run", f"{cost['conversation_calls_per_run']} (the answer, then the summary "
                                                "kept as memory)"]]
    machine = r["machine"]
    return (f"Dapr {machine['dapr_runtime']}, dapr-agents {machine['dapr_agents']}, {machine['cores']} cores, the "
            "README's defaults: API logging on, every run traced to Zipkin, sidecar metrics on, Redis "
            "`appendfsync always`, the memory summary.\n\n" + _table(["figure", "value"], rows))


def page_cpu(r: dict) -> str:
    row, cores = cpu_row(r), r["machine"]["cores"]
    per, ceiling = row["cpu_ms_per_run"], row["ceiling_runs_per_s"]
    app_share = row["app_bound_runs_per_s"] / ceiling
    text = (f"At concurrency {row['concurrency']} over HTTP with the instant LLM, one run cost, in CPU milliseconds: "
            + ", ".join(f"{SHOWN_NAME.get(name, name)} {per[name]}" for name in STACK)
            + f": {row['stack_cpu_ms_per_run']} in all, so the {cores} cores could complete at most {ceiling} runs/s; "
            f"{row['runs_per_s']} were reached ({row['fraction_of_ceiling']} of the ceiling, at a load average of "
            f"{row['load_average_1min']}). The bench client and the scripted LLM took {per[CLIENT]} ms more.\n\n"
            f"The app is one Python process, and its GIL lets it use one core at most: at {per['app']} ms per run "
            f"it can complete no more than {row['app_bound_runs_per_s']} runs/s, {app_share:.2f} of the ceiling, "
            "however idle the machine.")
    if app_share < GOAL_FRACTION_OF_CEILING:
        text += (f" So {GOAL_FRACTION_OF_CEILING} of the ceiling needs the app's share of the CPU to shrink, or a "
                 "second replica of the app (`test_load.py::test_runs_in_flight_finish_on_the_survivor_when_a_replica"
                 "_is_killed` runs two).")
    return text


def page_profile(r: dict) -> str:
    profile = r.get("app_profile", {})
    if "share" not in profile:
        return f"The app's profile was not recorded in this run: {profile.get('error', 'no profile')}."
    shares = sorted(profile["share"].items(), key=lambda item: -item[1])
    return (f"Where the app's CPU goes (py-spy, threads holding the GIL, {profile['at']}, {profile['samples']} "
            "samples):\n\n" + _table(["", "share"], [[name, f"{share:.0%}"] for name, share in shares]))


def _cpu_ms(row: dict) -> float:
    return row["stack_cpu_ms_per_run"]


def page_knobs(r: dict) -> str:
    plan = r["plan"]
    names = ["the README's defaults", *plan["knobs"], "the README's defaults, again"]
    rows = [row for name in names for row in r.get("knobs", []) if row["knob"] == name]
    if not rows:
        return _not_measured("The knobs")
    bold = "lean: all of these"
    table = _table(["knob", "runs/s", "CPU ms per run", "app", "daprd", "scheduler", "Zipkin", "load average",
                    "one run, p50 ms"],
                   [[f"**{row['knob']}**" if row["knob"] == bold else row["knob"],
                     *((f"**{row['runs_per_s']}**", f"**{_cpu_ms(row)}**") if row["knob"] == bold
                       else (row["runs_per_s"], _cpu_ms(row))),
                     *(row["cpu_ms_per_run"][name] for name in ("app", "daprd", "scheduler", "zipkin")),
                     row["load_average_1min"], row.get("latency", {}).get("p50_ms", "")] for row in rows])
    text = (f"The same load ({plan['knob_concurrency']} clients, instant LLM, {plan['knob_runs']} runs) with one "
            f"setting changed; CPU ms per run:\n\n{table}")
    defaults = [row for row in rows if row["knob"].startswith("the README's defaults")]
    by_name = {row["knob"]: row for row in rows}
    if len(defaults) < 2:
        return text
    drift = abs(_cpu_ms(defaults[0]) - _cpu_ms(defaults[1]))
    text += (f"\n\nThe defaults moved by {drift:.0f} ms between the start and the end, so a single knob's effect "
             "below that is noise here. Against the two measurements of the defaults:")
    effects = []
    if "no memory summary" in by_name:
        saved = sorted(_cpu_ms(d) - _cpu_ms(by_name["no memory summary"]) for d in defaults)
        effects.append(f"no memory summary (one LLM call, one activity and a memory write fewer) saves "
                       f"{saved[0]:.0f} to {saved[-1]:.0f} ms")
    if "tracing sampling 0" in by_name:
        saved = sorted(d["cpu_ms_per_run"]["zipkin"] - by_name["tracing sampling 0"]["cpu_ms_per_run"]["zipkin"]
                       for d in defaults)
        effects.append(f"tracing at 0 takes {saved[0]:.0f} to {saved[-1]:.0f} ms of Zipkin's away")
    if bold in by_name:
        lean = by_name[bold]
        one_run = f", with one run at concurrency 1 in {lean['latency']['p50_ms']} ms" if "latency" in lean else ""
        effects.append(f"all of them together bring a run to {_cpu_ms(lean)} ms{one_run}")
    return text + " " + "; ".join(effects) + "."


def page_goals(r: dict) -> str:
    goals = ", ".join(f"{goal} ms of CPU per run {how}" for how, (_, goal) in GOALS_MS.items())
    verdicts = []
    for how, (name, goal) in GOALS_MS.items():
        measured = [_cpu_ms(row) for row in r.get("knobs", []) if row["knob"].startswith(name)]
        if measured:
            verdicts.append(f"{' and '.join(map(str, measured))} ms {how}, "
                            + ("met" if min(measured) <= goal else "not met"))
    text = f"The goals: {goals}. This run: {'; '.join(verdicts) or 'the knobs were not measured'}."
    by_name = {row["knob"]: row for row in r.get("knobs", [])}
    shared = [(how, goal, by_name[name]) for how, goal, name in (
        ("with the README's defaults", GOALS_MS["with the README's defaults"][1], "a shared Dapr client"),
        ("lean", GOALS_MS["lean"][1], "lean, with a shared Dapr client")) if name in by_name]
    if shared:  # what the fix proposed upstream would give (docs/upstream.md); not in the service
        text += (" With one shared Dapr client (the fix proposed upstream, measured by the bench only): "
                 + "; ".join(f"{_cpu_ms(row)} ms {how}, " + ("met" if _cpu_ms(row) <= goal else "not met")
                             for how, goal, row in shared) + ".")
    return text


def page_breakdown(r: dict) -> str:
    b, p50 = r["breakdown"], r["latency"]["p50_ms"]
    text = (f"The workflow histories, {b['runs']} runs one at a time after the bursts above: "
            + ", ".join(f"`{name}` {ms} ms" for name, ms in b["activities_ms"].items())
            + f", and {b['orchestration_overhead_ms']} ms of orchestration between them, "
            f"{b['orchestration_overhead_ms'] / b['mean_run_ms']:.0%} of a mean run of {b['mean_run_ms']} ms.")
    if b["mean_run_ms"] > p50:
        text += (f" That mean is longer than the p50 of one run measured first ({p50} ms): the shares matter "
                 "here, not the sum.")
    return text


PAGE_BLOCKS = {"the machine": page_machine, "the worker pool": page_worker_pool, "the bursts": page_burst,
               "the two doors": page_doors, "a shared Dapr client": page_shared_client,
               "the topic's consumer": page_topic_consumer, "the figures": page_figures, "CPU per run": page_cpu,
               "the app's profile": page_profile, "the knobs": page_knobs, "the goals": page_goals,
               "where one run's time goes": page_breakdown}


def markers(name: str) -> tuple[str, str]:
    return (f"<!-- bench figures, {name}: written from {RESULTS} by `make bench` -->",
            f"<!-- end of the bench figures, {name} -->")


def _wrapped(text: str) -> str:
    """Prose at the page's width; tables as they are."""
    return "\n\n".join(part if part.startswith("|") else
                       textwrap.fill(part, width=105, break_long_words=False, break_on_hyphens=False)
                       for part in text.split("\n\n"))


def rendered_page(page: str, r: dict) -> str:
    """The page with each block of PAGE_BLOCKS rendered from the results `r`; the rest as it is."""
    for name, render in PAGE_BLOCKS.items():
        begin, end = markers(name)
        head, found, rest = page.partition(begin + "\n")
        if found:
            _, _, tail = rest.partition(end)
            page = f"{head}{begin}\n\n{_wrapped(render(r))}\n\n{end}{tail}"
    return page


def page_problems(page: str, r: dict) -> list[str]:
    """What the page shows that the results do not: one line per block that is missing or differs."""
    problems = [f"docs/benchmark.md has no block {name!r}" for name in PAGE_BLOCKS
                if any(marker not in page for marker in markers(name))]
    rendered = rendered_page(page, r)
    for name in PAGE_BLOCKS:
        begin, end = markers(name)
        shown, expected = (text.partition(begin)[2].partition(end)[0] for text in (page, rendered))
        if shown != expected:
            problems.append(f"docs/benchmark.md, block {name!r}: it shows what {RESULTS} does not say "
                            "(redraw it: python -m tools.bench --page)")
    return problems


def write_page(r: dict) -> None:
    PAGE.write_text(rendered_page(PAGE.read_text(), r))
