"""CPU time and memory of the stack's processes while `make bench` measures.

The operating system counts every process's CPU time (user + system); the
difference over a measurement, divided by the runs it completed, is what one
run costs each process. Summed over the stack, it gives the throughput this
machine could reach at best: cores / CPU-seconds per run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil

from tools.stack.processes import recorded
from tools.stack.settings import VENV_BIN

# The stack's processes, by the name the figures use.
STACK = ("app", "daprd", "scheduler", "placement", "redis", "zipkin")
CLIENT = "bench client and scripted LLM"


def stack_processes() -> dict[str, psutil.Process]:
    """The stack's processes, from this stack's pid files: the service's app and sidecar (children
    of its `dapr run`), the control plane, Redis, Zipkin. Another stack on the machine is not counted."""
    found = {CLIENT: psutil.Process()}
    for name in ("redis", "scheduler", "placement", "zipkin"):
        process = recorded(name)
        if process is not None:
            found[name] = process
    cli = recorded("service")
    for child in cli.children() if cli is not None else []:
        found["daprd" if child.name() == "daprd" else "app"] = child
    return found


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class ResourceMeter:
    """CPU seconds (exact, from the kernel) and peak RSS (sampled every 0.25 s) per process."""

    def __init__(self) -> None:
        self.processes = stack_processes()
        self.rss_mb: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}
        self._stop = threading.Event()

    def _sample_rss(self) -> None:
        while True:
            for name, process in self.processes.items():
                try:
                    self.rss_mb[name] = max(self.rss_mb.get(name, 0.0), process.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
            if self._stop.wait(0.25):
                return

    def __enter__(self) -> ResourceMeter:
        self._start = {name: _cpu_s(p) for name, p in self.processes.items()}
        self._thread = threading.Thread(target=self._sample_rss, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for name, process in self.processes.items():
            try:
                self.cpu_s[name] = _cpu_s(process) - self._start[name]
            except psutil.Error:
                self.cpu_s[name] = 0.0

    def per_run(self, runs: int) -> dict:
        """CPU milliseconds per run for each process, their sum over the stack, and the ceiling it implies."""
        ms = {name: round(self.cpu_s.get(name, 0.0) * 1000 / runs, 1) for name in (*STACK, CLIENT)}
        stack_ms = sum(ms[name] for name in STACK)
        cores = os.cpu_count() or 1
        return {"cpu_ms_per_run": ms, "stack_cpu_ms_per_run": round(stack_ms, 1),
                # Other work on the machine takes cores from the stack: the share of the ceiling reached
                # means little when this is above the core count.
                "load_average_1min": round(os.getloadavg()[0], 1),
                "ceiling_runs_per_s": round(cores / (stack_ms / 1000), 2) if stack_ms else None,
                # One Python process uses one core at most (the GIL): the app alone allows no more than this.
                "app_bound_runs_per_s": round(1000 / ms["app"], 2) if ms["app"] else None,
                "peak_rss_mb": {name: round(mb, 1) for name, mb in self.rss_mb.items() if name in ("app", "daprd")}}


# Where the app's Python time goes, from py-spy's samples of the threads holding the GIL. Each sample
# counts once, for the first of these its stack contains.
PROFILE_CATEGORIES = (
    ("a new DaprClient per state or LLM call (gRPC channel, stubs, HTTP health check)", ("DaprClient.__init__",)),
    ("printing the conversation to the console", ("print_message", "text_printer")),
    ("state store calls (Redis through the sidecar)", ("StateStoreService", "DaprStateStore")),
    ("the LLM calls (Conversation API)", ("DaprChatClient.generate",)),
    ("workflow replays (orchestrator code)", ("_execute_orchestrator", "OrchestrationExecutor")),
    ("the rest of the activities' code", ("_execute_activity",)),
    ("the HTTP endpoint (FastAPI, uvicorn)", ("starlette", "uvicorn")),
    ("the workflow worker's gRPC stream and thread pool", ("_durabletask/worker.py", "concurrent/futures")),
)


@contextlib.contextmanager
def app_profile(app: psutil.Process, out: Path) -> Iterator[dict]:
    """Sample the app with py-spy while the block runs; fill the yielded dict with each category's share."""
    shares: dict = {}
    py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if py_spy is None:
        shares["error"] = "py-spy is not installed (.venv/bin/pip install -r requirements-dev.txt)"
        yield shares
        return
    spy = subprocess.Popen([py_spy, "record", "--pid", str(app.pid), "--rate", "200", "--gil", "--nonblocking",
                            "--format", "raw", "--output", str(out)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        yield shares
    finally:
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
    counts = {name: 0 for name, _ in PROFILE_CATEGORIES} | {"other": 0}
    total = 0
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, n = line.rpartition(" ")
        total += int(n)
        name = next((name for name, marks in PROFILE_CATEGORIES if any(m in stack for m in marks)), "other")
        counts[name] += int(n)
    if not total:
        shares["error"] = f"py-spy recorded nothing: {err.strip()[-300:]}"
        return
    shares.update({"samples": total, "share": {name: round(n / total, 3) for name, n in counts.items()}})
