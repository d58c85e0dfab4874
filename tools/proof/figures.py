"""The figures the docs quote, kept in one committed file that the suite writes.

    TDA_WRITE_FIGURES=1 .venv/bin/python -m pytest tests/test_durability.py tests/test_load.py
    TDA_WRITE_FIGURES=1 .venv/bin/python -m pytest -m ha

rewrites the figures of the tests it runs in docs/figures.json, and the pages'
parts that quote them (without the variable, tests only report their figures
at the end of the session). TABLE_QUOTES and PROSE_QUOTES say which part of
docs/durability.md shows which figure; BLOCKS name the tables of docs/ha.md
that show every figure of some tests. tests/test_switch_offs.py checks that the
pages say exactly what the file holds, so no figure in them is typed by hand.
`python -m tools.proof.figures` rewrites the pages from the file alone.

PASSAGES are passages of other pages written from the same file:
- build times (docs/local-stack.md, docs/kubernetes.md): scripts/install-dapr.sh and
  scripts/install-kube-check.sh record each build's timings beside its log in the
  per-machine cache; `python -m tools.proof.figures builds` copies the records into
  docs/figures.json (`--from-setup-log FILE --run TEXT` reads them from a set-up's
  printed `[setup] ... N s` lines instead, for a run whose cache is gone);
- sample outputs (docs/doctor.md, docs/looking-inside.md): the tests that run the
  commands keep their output with TDA_WRITE_FIGURES=1 (keep_sample), and fail when
  the kept sample no longer has the shape of what the command prints (sample_problems).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tools.stack import settings
from tools.stack.settings import ROOT

FIGURES_FILE = ROOT / "docs" / "figures.json"
PAGE = ROOT / "docs" / "durability.md"
WRITE_VARIABLE = "TDA_WRITE_FIGURES"
HOW = f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_durability.py tests/test_load.py"


@dataclass(frozen=True)
class Block:
    """A table, between two comment lines of `page`, of every figure kept under a name starting with `prefix`:
    a row per name, a column per figure (`columns`: figure -> heading), in the order of `names`."""

    page: Path
    prefix: str
    names: tuple[str, ...]
    columns: dict[str, str]
    how: str

    @property
    def markers(self) -> tuple[str, str]:
        return (f"<!-- figures of {self.prefix}*: written from docs/figures.json by `{self.how}` -->",
                f"<!-- end of the figures of {self.prefix}* -->")


MACHINE = {"cpus": "cores", "load_average": "load average", "measured": "measured"}
BLOCKS = [
    Block(ROOT / "docs" / "ha.md", "HA fault: ",
          ("HA fault: placement leader killed", "HA fault: scheduler node killed", "HA fault: replica killed",
           "HA fault: placement leader's host frozen"),
          {"which": "which", "fault_to_next_completed_run_s": "fault to the next completed run (s)",
           "fault_to_first_new_run_completed_s": "to the first new run completed (s)",
           "run_p95_during_fault_s": "p95 of the runs in flight (s)",
           "fault_to_serving_again_s": "to serving again, node restarted (s)"},
          f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest -m ha"),
    Block(ROOT / "docs" / "ha.md", "HA load: ", ("HA load: steady load through the four faults",),
          {"runs": "runs", "rate_per_s": "runs/s", "run_p95_outside_faults_s": "p95 outside faults (s)",
           "pubsub_tasks_run_twice": "published tasks run twice", "submissions_unanswered": "unanswered",
           "llm_calls_repeated": "LLM calls repeated", "duration_s": "duration (s)", **MACHINE},
          f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest -m ha"),
    Block(ROOT / "docs" / "kubernetes.md", "Kube fault: ",
          ("Kube fault: app pod deleted mid LLM call",),
          {"delete_to_pod_gone_s": "delete to pod gone (s)", "delete_to_new_pod_ready_s": "to the new pod Ready (s)",
           "delete_to_completed_s": "to the run COMPLETED (s)", "llm_task_calls": "LLM calls of the run", **MACHINE},
          f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_kube_app.py"),
    Block(ROOT / "docs" / "kubernetes.md", "Kube fault under load: ",
          ("Kube fault under load: placement pod deleted", "Kube fault under load: scheduler pod deleted"),
          {"which": "which", "delete_to_next_completed_run_s": "delete to the next completed run (s)",
           "delete_to_pod_ready_again_s": "to the pod Ready again (s)"},
          f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_kube_app.py"),
    Block(ROOT / "docs" / "kubernetes.md", "Kube load: ", ("Kube load: steady load through both deletions",),
          {"runs_sent": "runs sent", "acknowledged": "acknowledged", "completed": "completed",
           "rate_per_s": "runs/s", "llm_latency_s": "LLM latency (s)", "run_p50_s": "p50 (s)", "run_p95_s": "p95 (s)",
           "llm_calls_repeated": "LLM calls repeated", **MACHINE},
          f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_kube_app.py"),
]


def block_table(block: Block, kept: dict) -> str:
    """The block's table, as the figures `kept` fill it."""
    rows = ["| " + " | ".join(["", *block.columns.values()]) + " |",
            "| " + " | ".join(["---"] * (len(block.columns) + 1)) + " |"]
    for name in block.names:
        values = kept["figures"].get(name, {})
        rows.append("| " + " | ".join([name.removeprefix(block.prefix),
                                       *(str(values.get(key, "not measured")) for key in block.columns)]) + " |")
    return "\n".join(rows) + "\n"


def with_block(page: str, block: Block, kept: dict) -> str:
    begin, end = block.markers
    head, found, rest = page.partition(begin + "\n")
    if not found:
        return page
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n\n{block_table(block, kept)}\n{end}{tail}"

# The crash table of docs/durability.md: the row whose first cell starts with the key
# shows, in its "measured" cell, the template filled with that test's figures.
TABLE_QUOTES = {
    "the app is killed": ("killed app mid LLM call", "{kill_to_complete_s} s from kill to COMPLETED, restart included"),
    "the sidecar (daprd) is killed": ("killed sidecar mid LLM call", "{kill_to_complete_s} s"),
    "Redis, the app and its sidecar are killed": (
        "killed Redis, app and sidecar mid run",
        "{restart_to_complete_s} s from the restarted service being ready to COMPLETED "
        "({kill_to_complete_s} s from the kill, restarts included)"),
    "`make serve` gets SIGTERM": ("SIGTERM on make serve mid LLM call",
                                  "{release_to_exit_s} s from the LLM's answer to a clean exit"),
    "200 tasks over `POST /run`": (
        "400 concurrent tasks",
        "{seconds_to_complete_all} s, {runs_per_second} runs/s, p50 {run_p50_s} s, p95 {run_p95_s} s per run"),
    "two replicas": ("replica killed with runs in flight",
                     "{runs_in_flight_on_the_killed_replica} runs in flight on it; "
                     "{kill_to_all_complete_s} s from kill to the last COMPLETED"),
}
# Sentences of the page's prose, filled the same way.
PROSE_QUOTES = [
    ("killed app mid LLM call", "the tests count {llm_task_calls} calls and read `{activities_run_twice}` "
                                "as the activity that ran twice"),
    ("400 concurrent tasks", "all 400 complete, each exactly once, {llm_calls} LLM calls"),
    ("400 concurrent tasks", "(measured on {cpus} cores, whose load average was {load_average} "
                             "when the load test ended)"),
]


def keep(test: str, **figures: object) -> None:
    """With TDA_WRITE_FIGURES=1, write `figures` under `test` into docs/figures.json."""
    if os.environ.get(WRITE_VARIABLE) != "1":
        return
    kept = load()
    # The machine's state goes with each figure: the same test on a busy machine takes longer.
    kept["figures"][test] = figures | {"cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 1),
                                       "measured": datetime.now(UTC).isoformat(timespec="seconds")}
    FIGURES_FILE.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
    write_pages(kept)


def write_pages(kept: dict) -> None:
    PAGE.write_text(quoted(PAGE.read_text(), kept))
    for block in BLOCKS:
        block.page.write_text(with_block(block.page.read_text(), block, kept))
    write_passages(kept)


def write_passages(kept: dict) -> None:
    for passage in PASSAGES:
        passage.page.write_text(with_passage(passage.page.read_text(), passage, kept))


def load() -> dict:
    if not FIGURES_FILE.exists():
        return {"written_by": HOW, "figures": {}}
    return json.loads(FIGURES_FILE.read_text())


def render(template: str, figures: dict) -> str:
    """The template with the figures filled in; a list prints as its items joined by commas."""
    return template.format(**{k: ", ".join(v) if isinstance(v, list) else v for k, v in figures.items()})


def crash_table(page: str) -> dict[str, str]:
    """The crash table of the page: first cell -> "measured" (last) cell."""
    rows = {}
    for line in page.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and not set(cells[0]) <= {"-", " "} and cells[0] != "fault":
            rows[cells[0]] = cells[2]
    return rows


def misquoted(page: str, kept: dict) -> list[str]:
    """What the page says that the figures file does not: one line per difference."""
    problems = []
    table = crash_table(page)
    for fault, measured in table.items():
        quote = next((q for prefix, q in TABLE_QUOTES.items() if fault.startswith(prefix)), None)
        if quote is None:
            if re.search(r"\d", measured):
                problems.append(f"the row {fault!r} shows {measured!r}, a figure no test writes")
            continue
        test, template = quote
        if test not in kept["figures"]:
            problems.append(f"docs/figures.json has no figures of {test!r} (run: {HOW})")
        elif measured != (expected := render(template, kept["figures"][test])):
            problems.append(f"the row {fault!r} shows {measured!r}; docs/figures.json says {expected!r}")
    for prefix in TABLE_QUOTES:
        if not any(fault.startswith(prefix) for fault in table):
            problems.append(f"the crash table has no row starting {prefix!r}")
    for test, template in PROSE_QUOTES:
        if test not in kept["figures"]:
            problems.append(f"docs/figures.json has no figures of {test!r} (run: {HOW})")
        elif (expected := render(template, kept["figures"][test])) not in " ".join(page.split()):
            problems.append(f"the page does not say {expected!r}")
    return problems


def misquoted_blocks(kept: dict) -> list[str]:
    """What the blocks' pages show that the figures file does not hold."""
    problems = []
    for block in BLOCKS:
        page = block.page.read_text()
        if block.markers[0] not in page or block.markers[1] not in page:
            problems.append(f"{block.page.relative_to(ROOT)} has no table of the figures of {block.prefix}*")
        elif with_block(page, block, kept) != page:
            problems.append(f"{block.page.relative_to(ROOT)}: its table of {block.prefix}* is not what "
                            f"docs/figures.json holds (run: python -m tools.proof.figures)")
        problems += [f"docs/figures.json has no figures of {name!r} (run: {block.how})"
                     for name in block.names if name not in kept["figures"]]
    return problems


def _pattern(template: str) -> str:
    """A regex that finds the template's sentence in the page, whatever its figures and line breaks."""
    parts = re.split(r"\{\w+\}", template)
    return r"[^|\n]+?".join(r"\s+".join(map(re.escape, part.split(" "))) for part in parts)


def quoted(page: str, kept: dict) -> str:
    """The page with every quote of TABLE_QUOTES and PROSE_QUOTES showing the figures `kept`."""
    lines = page.splitlines(keepends=True)
    for number, line in enumerate(lines):
        first = line.strip().strip("|").split("|")[0].strip() if line.startswith("|") else ""
        quote = next((q for prefix, q in TABLE_QUOTES.items() if first.startswith(prefix)), None)
        if quote and quote[0] in kept["figures"]:
            head, _, _ = line.rstrip("\n").rstrip(" |").rpartition("|")
            lines[number] = f"{head}| {render(quote[1], kept['figures'][quote[0]])} |\n"
    page = "".join(lines)
    for test, template in PROSE_QUOTES:
        if test in kept["figures"]:
            text = render(template, kept["figures"][test])
            page = re.sub(_pattern(template), lambda _, text=text: text, page, count=1)
    return page


# -- passages: a page's text between two comment lines, rendered from one entry of the file ----------
@dataclass(frozen=True)
class Passage:
    page: Path
    name: str  # the entry of docs/figures.json it shows
    render: Callable[[dict], str]
    how: str  # the command that writes the entry

    @property
    def markers(self) -> tuple[str, str]:
        return (f"<!-- {self.name}: written from docs/figures.json by `{self.how}` -->", f"<!-- end of {self.name} -->")


def with_passage(page: str, passage: Passage, kept: dict) -> str:
    begin, end = passage.markers
    head, found, rest = page.partition(begin + "\n")
    if not found:
        return page
    _, _, tail = rest.partition(end)
    entry = kept["figures"].get(passage.name)
    text = passage.render(entry) if entry else f"(not measured yet: `{passage.how}` writes it)"
    return f"{head}{begin}\n\n{text}\n\n{end}{tail}"


def misquoted_passages(kept: dict) -> list[str]:
    """What the passages' pages show that the figures file does not hold, or holds for other versions."""
    problems = []
    for passage in PASSAGES:
        page, where = passage.page.read_text(), passage.page.relative_to(ROOT)
        entry = kept["figures"].get(passage.name)
        if any(marker not in page for marker in passage.markers):
            problems.append(f"{where} has no passage {passage.name!r}")
        elif with_passage(page, passage, kept) != page:
            problems.append(f"{where}: its passage {passage.name!r} is not what docs/figures.json holds "
                            "(run: python -m tools.proof.figures)")
        if entry is None:
            problems.append(f"docs/figures.json has no {passage.name!r} (run: {passage.how})")
        elif entry.get("what", BUILDS.get(passage.name)) != BUILDS.get(passage.name):
            problems.append(f"docs/figures.json: {passage.name!r} is of {entry['what']}, not of the pinned "
                            f"{BUILDS[passage.name]} (build it, then run: {passage.how})")
    return problems


# -- build times ----------------------------------------------------------------------------------
# What each installer builds, as its record's "what" names it: a record of other versions is stale.
_PINS = settings.FACTS  # tools/stack/stack.env
BUILDS = {
    "build: the Dapr runtime": (f"Dapr runtime {_PINS['DAPR_RUNTIME_VERSION']} (slim) "
                                f"and CLI {_PINS['DAPR_CLI_VERSION']}"),
    "build: the Kubernetes check": (f"kube-apiserver {_PINS['KUBERNETES_VERSION']}, etcd {_PINS['ETCD_VERSION']} "
                                    f"and helm {_PINS['HELM_VERSION']}"),
    "build: the service's container image": "the service's container image",
    "build: the Kubernetes node": (f"kubectl kube-scheduler kube-controller-manager kubelet kube-proxy "
                                   f"{_PINS['KUBERNETES_VERSION']}, coredns {_PINS['COREDNS_VERSION']}"),
    "build: Dapr for the node": (f"dapr operator injector sentry placement scheduler daprd "
                                 f"{_PINS['DAPR_RUNTIME_VERSION']} for kubernetes"),
}
# The runtime's log is named after its folder: version and patch set (scripts/install-dapr.sh).
BUILD_LOGS = {"build: the Dapr runtime": f"build-{settings.RUNTIME_PREFIX.name}-slim",
              "build: the Kubernetes check": f"build-kube-check-{_PINS['KUBERNETES_VERSION']}",
              "build: the service's container image": "build-kube-image",
              "build: the Kubernetes node": f"build-kube-node-{_PINS['KUBERNETES_VERSION']}",
              "build: Dapr for the node": f"build-kube-dapr-{_PINS['DAPR_RUNTIME_VERSION']}"}
# The installers' step labels start with these, in their printed lines and in their records.
STEP_PREFIX = {"build: the Dapr runtime": "runtime: ", "build: the Kubernetes check": "kubernetes check: ",
               "build: the service's container image": "container image: ",
               "build: the Kubernetes node": "kubernetes node: ", "build: Dapr for the node": "dapr for kubernetes: "}
HOW_BUILDS = "python -m tools.proof.figures builds"


def render_build(record: dict) -> str:
    def step(label: str) -> str:  # "runtime: building daprd (1/5)" -> "daprd"; versions are in "what"
        return re.sub(r"^building | \(\d+/\d+\)$| \d+\.\d+\.\d+", "", label.split(": ", 1)[-1])

    steps = ", ".join(f"{step(label)} {seconds} s" for label, seconds in record["steps"])
    caches = record.get("go_caches_mb_before")
    machine = (f"{record['cores']} cores, a 1-minute load average of {record['load_average_1min_at_end']} at "
               f"the end, {record['go']}, Go caches holding {caches['GOCACHE']} MB (builds) and "
               f"{caches['GOMODCACHE']} MB (modules) before it started"
               if caches else "its printed lines do not say the machine's load")
    return textwrap.fill(f"Recorded on {record['run']}: {record['what']} built in {record['total_s']} s ({steps}); "
                         f"{machine}.", width=105, break_long_words=False, break_on_hyphens=False)


def build_from_cache(name: str, run: str) -> dict | None:
    """The record the installer wrote beside its log, if this machine built it."""
    path = settings.TDA_HOME / "logs" / f"{BUILD_LOGS[name]}.times.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    steps = [list(step) for step in record.pop("steps_s").items()]  # in the order they ran: a list keeps it
    return record | {"run": f"{run}, finished {record['finished']}", "steps": steps}


def build_from_setup_log(name: str, text: str, run: str) -> dict | None:
    """The same record, read from a set-up's printed lines, "[setup] runtime: building daprd (1/5) ... 190 s"
    and "[setup] runtime: Dapr 1.18.2 ready in ... (359 s in all)" (the machine's state: not in them)."""
    prefix = re.escape(STEP_PREFIX[name])
    steps = [[label, int(seconds)] for label, seconds in
             re.findall(rf"^\[setup\] ({prefix}(?!waiting).+?) \.\.\. (\d+) s$", text, re.M)]
    total = re.search(rf"^\[setup\] {prefix}.*ready in .* \((\d+) s in all\)$", text, re.M)
    if total is None or not steps:
        return None
    return {"what": BUILDS[name], "run": run, "steps": steps, "total_s": int(total.group(1))}


def record_builds(setup_log: Path | None, run: str) -> list[str]:
    """Put the build records into docs/figures.json; the names of those found."""
    kept, found = load(), []
    for name in BUILDS:
        record = (build_from_setup_log(name, setup_log.read_text(), run) if setup_log
                  else build_from_cache(name, run))
        if record is not None:
            kept["figures"][name] = record
            found.append(name)
    FIGURES_FILE.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
    write_passages(kept)
    return found


# -- sample outputs -------------------------------------------------------------------------------
def render_sample(entry: dict) -> str:
    return f"```text\n{entry['output'].rstrip()}\n```"


def shown_output(output: str) -> str:
    """Output as a page shows it: the clone's path and the home folder shortened, trailing spaces gone."""
    output = output.replace(str(ROOT), "<clone>").replace(str(Path.home()), "~")
    return "\n".join(line.rstrip() for line in output.strip("\n").splitlines())


# What differs from one run of a command to the next, and its placeholder: ids, times, paths, pids,
# versions and measured quantities (a number with a decimal point or a unit). Counts stay as printed.
VARYING = [(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>"),
           (r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])", "<id>"), (r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\S*", "<time>"),
           (r"(?<![\w:/.<])(?:~|<clone>)?/[^\s;,)'`]*", "<path>"), (r"\bpid \d+", "pid <n>"),
           (r"\d+(?:\.\d+)+|\d+(?= ?(?:ms|s|min|MB)\b)", "<n>"), (r"\s+", " ")]


def shape(output: str) -> list[str]:
    """The lines of `output` with what differs from run to run (VARYING) replaced by placeholders."""
    lines = []
    for line in shown_output(output).splitlines():
        for pattern, placeholder in VARYING:
            line = re.sub(pattern, placeholder, line)
        lines.append(line.strip())
    return lines


def keep_sample(name: str, output: str) -> None:
    """With TDA_WRITE_FIGURES=1, keep `output` as the sample `name` and rewrite the passages."""
    if os.environ.get(WRITE_VARIABLE) != "1":
        return
    kept = load()
    measured = datetime.now(UTC).isoformat(timespec="seconds")
    kept["figures"][name] = {"output": shown_output(output), "measured": measured}
    FIGURES_FILE.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
    write_passages(kept)


def sample_problems(name: str, output: str, varies: Callable[[str], bool] = lambda line: False) -> list[str]:
    """How the kept sample `name` differs in shape from `output`, a fresh run's (lines for which `varies`
    is true, such as what depends on what else runs on the machine, left out); [] if they agree."""
    entry = load()["figures"].get(name)
    if entry is None:
        return [f"docs/figures.json has no sample {name!r} (run its test with {WRITE_VARIABLE}=1)"]
    kept, fresh = ([line for line in shape(text) if not varies(line)] for text in (entry["output"], output))
    for number, (was, now) in enumerate(itertools.zip_longest(kept, fresh), start=1):
        if was != now:
            return [f"the sample {name!r} no longer has the shape of the command's output (compared line {number}: "
                    f"the sample's {was!r}, the command's {now!r}; run its test with {WRITE_VARIABLE}=1)"]
    return []


HOW_DOCTOR = f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_docs_figures.py -k doctor"
HOW_RUNS = f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_docs_figures.py -k 'workflows or crash'"
HOW_APPROVALS = f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_approval.py -k 'demo or waiting'"
HOW_TEAM = f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_team.py -k demo"
PASSAGES = [
    Passage(ROOT / "docs" / "local-stack.md", "build: the Dapr runtime", render_build, HOW_BUILDS),
    Passage(ROOT / "docs" / "kubernetes.md", "build: the Kubernetes check", render_build, HOW_BUILDS),
    Passage(ROOT / "docs" / "kubernetes.md", "build: the service's container image", render_build, HOW_BUILDS),
    Passage(ROOT / "docs" / "kubernetes.md", "build: the Kubernetes node", render_build, HOW_BUILDS),
    Passage(ROOT / "docs" / "kubernetes.md", "build: Dapr for the node", render_build, HOW_BUILDS),
    Passage(ROOT / "docs" / "kubernetes.md", "sample: the Kubernetes check", render_sample,
            f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_docs_figures.py -k kubernetes"),
    Passage(ROOT / "docs" / "doctor.md", "sample: make doctor on a fresh clone", render_sample, HOW_DOCTOR),
    Passage(ROOT / "docs" / "looking-inside.md", "sample: make workflows", render_sample, HOW_RUNS),
    Passage(ROOT / "docs" / "looking-inside.md", "sample: make history", render_sample, HOW_RUNS),
    Passage(ROOT / "docs" / "looking-inside.md", "sample: make crash-demo", render_sample, HOW_RUNS),
    Passage(ROOT / "docs" / "tools.md", "sample: make approval-demo", render_sample, HOW_APPROVALS),
    Passage(ROOT / "docs" / "tools.md", "sample: runs waiting for approval", render_sample, HOW_APPROVALS),
    Passage(ROOT / "docs" / "tools.md", "sample: an approval under make serve-ha", render_sample,
            f"{WRITE_VARIABLE}=1 .venv/bin/python -m pytest tests/test_approval_ha.py -s"),
    Passage(ROOT / "docs" / "team.md", "sample: make team-demo", render_sample, HOW_TEAM),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.proof.figures",
                                     description="rewrite the docs' figures from docs/figures.json")
    sub = parser.add_subparsers(dest="command")
    builds = sub.add_parser("builds", help="first copy the build times the installers recorded into the file")
    builds.add_argument("--from-setup-log", type=Path, metavar="FILE",
                        help="read them from a set-up's printed `[setup] ... N s` lines instead of the cache")
    builds.add_argument("--run", default="this machine's last build",
                        help="which run it was, as the docs will say it (e.g. 'the cold CI run of 2026-12-03')")
    args = parser.parse_args(argv)
    if args.command == "builds":
        found = record_builds(args.from_setup_log, args.run)
        print(f"build times recorded: {', '.join(found) or 'none found'}")
        if not found:
            return 1
    else:
        write_pages(load())
    for written in sorted({PAGE, *(block.page for block in BLOCKS), *(passage.page for passage in PASSAGES)}):
        print(f"{written.relative_to(ROOT)}: figures quoted from {FIGURES_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
