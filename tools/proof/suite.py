"""The test suite, its modules in groups side by side: what `make test` runs.

    python -m tools.proof.suite [tests/test_x.py ...] [-- pytest options]

Each group is one pytest session with a whole stack of its own (Redis, placement, scheduler,
Zipkin, the scripted LLM, the service) in private network and PID namespaces
(tools/stack/namespaces.py), so that the groups' stacks use the same ports without meeting.
Inside, the group's folder (.stack/suite/group-N) is mounted over the state folder, so every
path a test prints or expects is the one of a single session. Most of a test's time is spent
waiting, so groups side by side finish sooner than one session would, on two cores as well.
The modules are dealt out by the time each took in the last run on this machine (kept in the
runtime cache), the longest first. Without namespaces (not root, no `unshare`), and with
TDA_WRITE_FIGURES=1 (whose writers share docs/figures.json), the suite is one pytest session,
as before. Each group's output is printed when it ends; the exit status is pytest's.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tools.stack import namespaces
from tools.stack.processes import say
from tools.stack.settings import ROOT, STATE_DIR, TDA_HOME

TIMES_FILE = TDA_HOME / "logs" / "test-module-seconds.json"
UNKNOWN_MODULE_S = 60.0  # a module this machine has not timed yet
GROUP_TIMEOUT_S = 3600  # a whole group; each test also has pytest's own 300 s


@dataclass
class Group:
    number: int
    modules: list[str] = field(default_factory=list)
    expected_s: float = 0.0
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def folder(self) -> Path:
        return STATE_DIR / "suite" / f"group-{self.number}"


def all_modules() -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py"))


# Modules that must share a group: each starts the one Kubernetes node a machine can run (tools/kube/node.py),
# so in two groups side by side the second would find the first one's node.
TOGETHER = (("tests/test_kube_node.py", "tests/test_kube_dapr.py", "tests/test_kube_app.py"),)


def dealt(modules: list[str], groups: int, times: dict[str, float]) -> list[Group]:
    """The modules in `groups` groups of about equal time: each module (or each set of TOGETHER), longest
    first, to the group with the least time so far."""
    units = [[m for m in together if m in modules] for together in TOGETHER]
    units = [unit for unit in units if unit]
    units += [[m] for m in modules if not any(m in unit for unit in units)]
    seconds = {tuple(unit): sum(times.get(m, UNKNOWN_MODULE_S) for m in unit) for unit in units}
    result = [Group(number) for number in range(1, groups + 1)]
    for unit in sorted(units, key=lambda u: -seconds[tuple(u)]):
        group = min(result, key=lambda g: g.expected_s)
        group.modules.extend(unit)
        group.expected_s += seconds[tuple(unit)]
    return [group for group in result if group.modules]


def module_times(report: Path) -> dict[str, float]:
    """Seconds per test module in a junit XML report (setup, call and teardown of each test)."""
    if not report.exists():
        return {}
    times: dict[str, float] = defaultdict(float)
    for case in ElementTree.parse(report).iter("testcase"):
        # "tests.test_x", or "tests.test_x.TestClass"
        module = next((part for part in case.get("classname", "").split(".") if part.startswith("test_")), None)
        if module:
            times[f"tests/{module}.py"] += float(case.get("time") or 0)
    return dict(times)


def run_group(group: Group, pytest_options: list[str]) -> Group:
    group.folder.mkdir(parents=True, exist_ok=True)
    STATE_DIR.mkdir(parents=True, exist_ok=True)  # where the group's folder is mounted
    report, log = group.folder / "junit.xml", group.folder / "pytest.log"
    report.unlink(missing_ok=True)
    # The report's path inside, where the group's folder is seen as the state folder.
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={STATE_DIR / report.name}",
            *pytest_options, *group.modules]
    started = time.monotonic()
    with open(log, "wb") as out:
        try:
            # Inside, the group's folder is seen as the state folder itself, so every path a test
            # prints or expects (".stack/logs/run.log") is the one of a single session.
            group.returncode = subprocess.run(
                namespaces.inside(ROOT, argv, folder_over=(group.folder, STATE_DIR)), cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT,
                timeout=GROUP_TIMEOUT_S, check=False, preexec_fn=namespaces.killed_with_parent(os.getpid()),
            ).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n[suite] group {group.number}: no result after {GROUP_TIMEOUT_S} s, stopped\n".encode())
            group.returncode = 1
    group.seconds = time.monotonic() - started
    return group


def side_by_side(modules: list[str], pytest_options: list[str]) -> int:
    (STATE_DIR / "suite").mkdir(parents=True, exist_ok=True)
    lock = open(STATE_DIR / "suite" / ".lock", "w")  # held until we exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another test suite runs in this clone (its groups use {STATE_DIR / 'suite'}): "
                         "wait for it to end, or stop it with Ctrl+C") from None
    times = json.loads(TIMES_FILE.read_text()) if TIMES_FILE.exists() else {}
    times = {module: seconds for module, seconds in times.items() if module in all_modules()}
    groups = dealt(modules, namespaces.side_by_side(), times)
    say(f"{len(modules)} test modules in {len(groups)} groups side by side, each with a stack of its own "
        f"in private namespaces (their output: {STATE_DIR / 'suite'}/group-N/pytest.log)")
    for group in groups:
        say(f"group {group.number} (about {group.expected_s / 60:.0f} min): "
            + " ".join(Path(m).stem for m in group.modules))
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        futures = [pool.submit(run_group, group, pytest_options) for group in groups]
        for future in futures:  # in order: group 1's output first, as it would read in one session
            group = future.result()
            print(f"\n{'=' * 30} group {group.number}: {' '.join(Path(m).stem for m in group.modules)} "
                  f"{'=' * 30}", flush=True)
            print((group.folder / "pytest.log").read_text(errors="replace"), end="", flush=True)
    measured = times | {module: seconds for group in groups
                        for module, seconds in module_times(group.folder / "junit.xml").items()}
    TIMES_FILE.parent.mkdir(parents=True, exist_ok=True)
    TIMES_FILE.write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    failed = [group for group in groups if group.returncode != 0]
    say(f"{len(groups)} groups in {(time.monotonic() - started) / 60:.1f} min ("
        + ", ".join(f"group {g.number}: {g.seconds / 60:.1f} min" for g in groups) + ")"
        + (f"; FAILED: group {', '.join(str(g.number) for g in failed)} (see above)" if failed else ""))
    return max((group.returncode or 0) for group in groups) if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    pytest_options = args[args.index("--") + 1:] if "--" in args else []
    modules = (args[:args.index("--")] if "--" in args else args) or all_modules()
    if not namespaces.available() or os.environ.get("TDA_WRITE_FIGURES"):
        why = ("TDA_WRITE_FIGURES=1: its writers share docs/figures.json" if namespaces.available()
               else "no private namespaces here (needs root and `unshare`)")
        say(f"one pytest session on the normal ports ({why})")
        return subprocess.run([sys.executable, "-m", "pytest", *pytest_options, *modules], cwd=ROOT).returncode
    return side_by_side(modules, pytest_options)


if __name__ == "__main__":
    sys.exit(main())
