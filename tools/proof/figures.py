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
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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


if __name__ == "__main__":
    write_pages(load())
    for written in sorted({PAGE, *(block.page for block in BLOCKS)}):
        print(f"{written.relative_to(ROOT)}: figures quoted from {FIGURES_FILE.relative_to(ROOT)}")
