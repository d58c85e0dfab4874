"""Each claim's test fails with its capability off: `make switch-offs`.

    python -m tools.proof.switch_offs [--only TEXT ...] [--no-write]

For every switch-off of tools/proof/switch_off_table.py (one per test the claims
table of docs/claims.md names): copy the repository as it is (tracked and untracked
files, not the ignored ones; the copy gets its own `.stack` and uses this
clone's `.venv` and the runtime cache), switch the capability off in the copy,
run the named test there, and check that it FAILS, for the reason the
switch-off declares (a stack that did not start in time proves nothing). It
copies the files of the working tree, so it checks uncommitted edits too, and
never touches this clone. Each copy runs in a private
network and PID namespace (`unshare`, as root), so it never meets a stack on
this machine's ports; without namespaces the copies run one by one on the
normal ports, which must be free. Prints a table; with every switch-off run
(no --only), or with --merge, writes it to docs/switch-offs.json and to the
section "How we know the tests can fail" of docs/claims.md. Each row records
the commit it ran on and a sha256 of the files its proof depends on
(proof_files), so that `make test` notices a row older than those files
(stale_rows). Exits 1 if any test passed with its capability off, or a
switch-off no longer applies.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from tools.proof.suite import TOGETHER
from tools.proof.switch_off_table import SWITCH_OFFS, SwitchOff
from tools.stack import namespaces
from tools.stack.processes import port_in_use, say
from tools.stack.settings import ROOT, SERVICE_PORTS, STACK_PORTS

RESULTS_FILE = ROOT / "docs" / "switch-offs.json"
PAGE = ROOT / "docs" / "claims.md"
BEGIN, END = "<!-- switch-offs: written by `make switch-offs` -->", "<!-- end of switch-offs -->"
# What the copies must not inherit: this clone's state folder, and the figures switch.
NOT_INHERITED = ("TDA_STATE_DIR", "TDA_WRITE_FIGURES", "PYTEST_ADDOPTS")
# What they get: more time for each process to start (Zipkin's JVM, on a busy machine), so that a
# switch-off run fails because of its switch-off, not because the machine was slow.
COPY_ENV = {"TDA_STARTUP_TIMEOUT": "120"}
RUN_TIMEOUT_S = 900  # one switch-off's pytest run; each test has pytest's own 300 s


# Every test's proof also rests on the suite's fixtures and helpers.
SHARED_TEST_FILES = ("tests/conftest.py", "tests/helpers.py")


class OutOfDate(Exception):
    """A switch-off's text is no longer in the file it edits."""


def switched_off(entry: SwitchOff, read) -> dict[str, str]:
    """The files `entry` changes, as they are with the switch-off applied: path -> text.
    `read(path)` gives a file's current text."""
    changed: dict[str, str] = {}
    for edit in entry.edits:
        if edit.old is None:
            changed[edit.file] = edit.new
            continue
        text = changed[edit.file] if edit.file in changed else read(edit.file)
        if text.count(edit.old) != 1:
            raise OutOfDate(f"{edit.file}: the text {edit.old!r} is there {text.count(edit.old)} times, not once")
        changed[edit.file] = text.replace(edit.old, edit.new)
    return changed


def proof_files(entry: SwitchOff, root: Path = ROOT) -> tuple[tuple[str, ...], str]:
    """The files `entry`'s proof depends on, and one sha256 over their paths and contents: the test's
    module, the suite's fixtures and helpers, every file the switch-off edits, and the row's `covers`.
    A file the switch-off adds, absent from `root`, counts as absent (so adding it changes the hash).
    The switch-off's own declaration is hashed too: a row run with another edit or reason proves
    nothing about this one."""
    module = "tests/" + entry.test.split("::")[0]
    files = tuple(sorted({module, *SHARED_TEST_FILES, *(edit.file for edit in entry.edits), *entry.covers}))
    digest = hashlib.sha256(f"{entry!r}\n".encode())
    for name in files:
        path = root / name
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"
        digest.update(f"{name}\0{content}\n".encode())
    return files, digest.hexdigest()


def stamp(entry: SwitchOff) -> dict:
    """What a row records of the code it ran on: the commit checked out, whether the row's files had
    uncommitted edits (the copy takes the working tree as it is), and the sha256 of those files."""
    files, sha256 = proof_files(entry)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    edited = subprocess.run(["git", "status", "--porcelain", "--", *files], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return {"commit": head.stdout.strip(), "uncommitted_edits": bool(edited.stdout.strip()), "files_sha256": sha256}


def entry_key(entry: SwitchOff) -> tuple[str, str, str]:
    """A row's key: a claim's test can have more than one switch-off (one per half of the claim)."""
    return entry.claim, entry.test, entry.what or f"none: {entry.none}"


def row_key(row: dict) -> tuple[str, str, str]:
    return row["claim"], row["test"], row["switch_off"]


def stale_rows(rows: list[dict], entries: list[SwitchOff] = SWITCH_OFFS,
               root: Path = ROOT) -> dict[tuple[str, str, str], str]:
    """For each switch-off whose row does not describe today's files: its key (entry_key), and why."""
    by_key = {row_key(row): row for row in rows}
    stale = {}
    for entry in entries:
        row = by_key.get(entry_key(entry))
        files, sha256 = proof_files(entry, root)
        if row is None:
            why = "no row: never run"
        elif "files_sha256" not in row:
            why = f"no stamp: run on {row.get('finished', '?')[:10]}, before rows recorded their commit"
        elif row["files_sha256"] != sha256:
            why = (f"run on {row['commit'][:7]}; since, its switch-off in switch_off_table.py or one of these "
                   f"changed: {', '.join(files)}")
        else:
            continue
        stale[entry_key(entry)] = why
    return stale


def stale_message(stale: dict[tuple[str, str, str], str], entries: list[SwitchOff] = SWITCH_OFFS) -> str:
    """Which rows of docs/switch-offs.json prove other files than today's, and the command that runs them
    again and writes their rows (the whole table when every row is stale). `--only` matches a name within a
    row's test, so the test's function name is enough."""
    lines = [f"{len(stale)} of {len(entries)} rows of {RESULTS_FILE.relative_to(ROOT)} were not run on today's "
             "files, so they do not show that today's tests can fail:"]
    lines += [f"  {test} ({claim}; switch-off: {what}): {why}" for (claim, test, what), why in stale.items()]
    if set(stale) >= set(map(entry_key, entries)):
        return "\n".join([*lines, "Run the whole table again (long: every row starts a stack): make switch-offs"])
    names = dict.fromkeys(test.split("::")[-1] for _, test, _ in stale)
    return "\n".join([*lines, f'Run them again: make switch-offs ONLY="{" ".join(names)}"'])


def copy_repository(target: Path) -> None:
    """The repository as it is now, uncommitted changes included, in `target`; its `.venv` is ours."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.split(b"\0")):
        source = ROOT / os.fsdecode(name)
        if source.is_file():  # not deleted in the working tree
            destination = target / os.fsdecode(name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    (target / ".venv").symlink_to(ROOT / ".venv")


def pytest_argv(copy: Path, tests: list[str], report: Path, isolated: bool) -> list[str]:
    argv = [str(copy / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
            f"--junitxml={report}", *[f"tests/{test}" for test in tests]]
    return namespaces.inside(copy, argv) if isolated else argv


def outcomes(report: Path) -> list[tuple[str, str, str, str]]:
    """(test, outcome, message, details) for each test in a junit XML report.
    outcome: passed, failed, error or skipped; details: the traceback and assertion pytest reported."""
    if not report.exists():
        return []
    rows = []
    for case in ElementTree.parse(report).iter("testcase"):
        outcome, message, details = "passed", "", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped") and outcome in ("passed", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message, details = child.get("message") or "", child.text or ""
        rows.append((case.get("name", ""), outcome, message, details))
    # A test that failed and then also errored at teardown is reported twice. With its capability off, a
    # test can leave work behind that a teardown check objects to (a second run still reaching the LLM):
    # the failure of the test itself is what the switch-off is judged on.
    failed = {name for name, outcome, _, _ in rows if outcome == "failed"}
    return [row for row in rows
            if not (row[1] == "error" and row[0] in failed and row[2].startswith("failed on teardown"))]


def verdict(results: list[tuple[str, str, str, str]], because: str = "", every_case: bool = True) -> tuple[bool, str]:
    """Whether the run FAILED as it should, and how, in one line.

    The test fails as it should when every case of it fails (each parametrization), each for the
    reason `because` (a regex searched in pytest's report of the failure); with `every_case` False
    (a corpus of inputs, of which the switch-off changes some), when some cases fail for that reason
    and none for another. A failure for another reason (the stack did not start in time, say)
    proves nothing about the test, and does not count.
    """
    if not results:
        return False, "no test ran (see the run's log)"
    counts = {kind: sum(1 for result in results if result[1] == kind) for kind in ("failed", "error", "passed",
                                                                                   "skipped")}
    failures = [(message, details) for _, outcome, message, details in results if outcome in ("failed", "error")]
    if not failures or (every_case and (counts["passed"] or counts["skipped"])):
        return False, f"{counts['passed']} passed, {counts['skipped']} skipped, with the capability off"
    reports = [f"{message}\n{details}" for message, details in failures]
    expected = [report for report in reports if re.search(because, report)]
    if not expected or len(expected) < len(failures):
        other = next(report for report in reports if not re.search(because, report))
        return False, f"failed, but not because {because!r}: {_shorten(other.split(chr(10))[0])}"
    return True, f"{len(expected)} of {len(results)} failed: {_reason(expected[0], because)}"


def _reason(report: str, because: str) -> str:
    """The line of pytest's report where it says `because`, shortened around what it says."""
    match = re.search(because, report)
    line_start = report.rfind("\n", 0, match.start()) + 1
    line_end = report.find("\n", match.end())
    line = report[line_start:line_end if line_end >= 0 else len(report)]
    start = max(0, match.start() - line_start - 40)
    return ("…" if start else "") + _shorten(line[start:])


def _shorten(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def run_one(entry: SwitchOff, isolated: bool, keep: bool) -> dict:
    started = time.monotonic()
    row = {"claim": entry.claim, "test": entry.test, "switch_off": entry.what or f"none: {entry.none}"} | stamp(entry)
    if not entry.edits and not entry.env:
        return row | {"failed": None, "how": entry.none, "seconds": 0}
    copy = Path(tempfile.mkdtemp(prefix="tda-switch-off-"))
    try:
        copy_repository(copy)
        try:
            for path, text in switched_off(entry, lambda p: (copy / p).read_text()).items():
                (copy / path).write_text(text)
        except OutOfDate as exc:
            return row | {"failed": False, "how": f"switch-off out of date: {exc}", "seconds": 0}
        report, log = copy / ".stack" / "switch-off.xml", copy / ".stack" / "switch-off.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED} | COPY_ENV | entry.env
        if not isolated:
            _require_free_ports()
        with open(log, "wb") as out:
            try:
                subprocess.run(pytest_argv(copy, [entry.test], report, isolated), cwd=copy, env=env, stdout=out,
                               stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S, check=False,
                               preexec_fn=namespaces.killed_with_parent(os.getpid()) if isolated else None)
            except subprocess.TimeoutExpired:
                return row | {"failed": False, "how": f"no result after {RUN_TIMEOUT_S} s (log: {log})",
                              "seconds": round(time.monotonic() - started)}
        failed, how = verdict(outcomes(report), entry.because, entry.every_case)
        if not failed:
            how += f" (log: {log})"
            keep = True
        return row | {"failed": failed, "how": how, "seconds": round(time.monotonic() - started)}
    finally:
        if not keep:
            shutil.rmtree(copy, ignore_errors=True)


def _require_free_ports() -> None:
    taken = {what: port for what, port in (STACK_PORTS | SERVICE_PORTS).items() if port_in_use(port)}
    if taken:
        raise SystemExit(f"without namespaces the copies need the stack's ports, but these are taken: {taken}. "
                         "Stop the stack (`make stop`) or run as root where `unshare` works.")


def run_on(row: dict) -> str:
    """The commit (short) and day a row ran on; `+ edits` when the row's files had uncommitted edits."""
    if "commit" not in row:
        return f"not recorded, {row['finished'][:10]}"
    return f"{row['commit'][:7]}{' + edits' if row['uncommitted_edits'] else ''}, {row['finished'][:10]}"


def table(rows: list[dict]) -> str:
    """The results as a Markdown table: claim, switch-off, test, failed as it should, commit and date."""
    lines = ["| claim | switch-off | test | failed as it should | run on |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        answer = {True: "yes", False: "**NO**", None: "no switch-off"}[row["failed"]]
        cells = [row["claim"], row["switch_off"], f"`{row['test']}`", f"{answer}: {row['how']}", run_on(row)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(lines)


def page_section(results: dict) -> str:
    """What the section of docs/claims.md holds between its markers."""
    rows = results["rows"]
    when = sorted(row["finished"] for row in rows)
    took = round(sum(row["seconds"] for row in rows) / 60, 1)
    span = when[0] if when[0][:10] == when[-1][:10] and len(rows) == 1 else f"{when[0]} to {when[-1]}"
    return (f"{BEGIN}\n\nWritten by the switch-off runs of {span}, "
            f"{'in private namespaces' if results['isolated'] else 'on the normal ports'}; "
            f"one after the other, these rows take {took} min.\n\n{table(rows)}\n\n{END}")


def write(rows: list[dict], isolated: bool, merge: bool) -> None:
    """The rows into docs/switch-offs.json and the page, in the table's order; with `merge`, the
    rows of earlier runs stay for the switch-offs not run now (if they are still declared)."""
    earlier = json.loads(RESULTS_FILE.read_text())["rows"] if merge and RESULTS_FILE.exists() else []
    by_key = {row_key(row): row for row in [*earlier, *rows]}
    results = {"isolated": isolated, "rows": [by_key[key] for key in map(entry_key, SWITCH_OFFS) if key in by_key]}
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    page = PAGE.read_text()
    if BEGIN not in page or END not in page:
        raise SystemExit(f"{PAGE}: the markers of the switch-off table are missing ({BEGIN} ... {END})")
    before, rest = page.split(BEGIN, 1)
    PAGE.write_text(before + page_section(results) + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.proof.switch_offs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=[], help="run only the switch-offs whose test or claim has TEXT")
    parser.add_argument("--no-write", action="store_true", help="print the table, write no docs")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: write the rows run now into the docs, beside the earlier ones")
    parser.add_argument("--keep", action="store_true", help="keep every copy (copies of failures are always kept)")
    args = parser.parse_args(argv)
    chosen = [e for e in SWITCH_OFFS if not args.only or any(t in e.test or t in e.claim for t in args.only)]
    if not chosen:
        parser.error(f"no switch-off's test or claim has any of {args.only}")
    isolated = namespaces.available()
    say(f"{len(chosen)} switch-offs, each in a throw-away copy of {ROOT}, "
        + (f"{namespaces.side_by_side()} side by side in private network and PID namespaces" if isolated
           else "one by one on the normal ports (no namespaces here: needs root and `unshare`)"))
    started, rows = time.monotonic(), []

    one_node = threading.Lock()  # the copies whose test starts the machine's one Kubernetes node: one at a time

    def run(entry: SwitchOff) -> dict:
        starts_the_node = any(f"tests/{entry.test.split('::')[0]}" in modules for modules in TOGETHER)
        with one_node if starts_the_node else contextlib.nullcontext():
            return run_one(entry, isolated, args.keep) | {"finished": datetime.now(UTC).isoformat(timespec="seconds")}

    # In namespaces, copies run side by side; without, one by one on the normal ports.
    with ThreadPoolExecutor(max_workers=namespaces.side_by_side() if isolated else 1) as pool:
        for number, row in enumerate(pool.map(run, chosen), 1):
            rows.append(row)
            answer = {True: "failed, as it should", False: "DID NOT FAIL", None: "no switch-off"}[row["failed"]]
            say(f"[{number}/{len(chosen)}] {row['test']}: {answer} in {row['seconds']} s ({row['how']})")
    minutes = round((time.monotonic() - started) / 60, 1)
    print(table(rows))
    wrong = [row for row in rows if row["failed"] is False]
    say(f"{len(rows) - len(wrong)} of {len(rows)} as they should be, in {minutes} min"
        + (f"; NOT: {', '.join(row['test'] for row in wrong)}" if wrong else ""))
    if (args.merge or not args.only) and not args.no_write:
        write(rows, isolated, merge=args.merge)
        say(f"written: {RESULTS_FILE.relative_to(ROOT)} and the table in {PAGE.relative_to(ROOT)}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
