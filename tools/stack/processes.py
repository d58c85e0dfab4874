"""The processes the stack starts: spawn, record, wait for, stop.

Each process runs in its own process group, with its output in a log file
under `.stack/logs/` and a pid file under `.stack/pids/`, so that `make stop`
finds it again even after the command that started it crashed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tools.stack.settings import LOG_DIR, PID_DIR, ROOT

STARTUP_TIMEOUT_S = float(os.environ.get("TDA_STARTUP_TIMEOUT", "60"))
STOP_TIMEOUT_S = 15.0
# How long a stopping app may take to finish its work before it is killed.
DRAIN_TIMEOUT_S = float(os.environ.get("TDA_DRAIN_TIMEOUT", "30"))


class StackError(RuntimeError):
    """A problem the user can fix; the message says how."""


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def rel(path: Path) -> str:
    """A path as the user reads it: relative to the repository when it is inside it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)


@dataclass
class Service:
    """A long-running process of the stack: how to start it, the ports it takes, how to tell it is ready."""

    name: str
    argv: list[str]
    ports: dict[str, int]
    ready: Callable[[], bool]


# --------------------------------------------------------------------------
# Waiting and probing
# --------------------------------------------------------------------------
def wait_until(check: Callable[[], bool], what: str, timeout_s: float = STARTUP_TIMEOUT_S,
               process: psutil.Process | None = None, log: Path | None = None) -> None:
    """Poll `check` until it is true; raise if the deadline passes or `process` dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if process is not None and not alive(process):
            raise StackError(f"{what}: the process exited early.{log_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not ready after {timeout_s:.0f} s.{log_tail(log)}")
        time.sleep(0.1)


def http_ok(url: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def port_holder(port: int) -> str:
    """Who listens on `port`, as 'pid N (command line)', or a fallback text."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(psutil.Process(conn.pid).cmdline()) or psutil.Process(conn.pid).name()
                    return f"pid {conn.pid} ({cmd[:120]})"
                return f"pid {conn.pid}"
    return "another process (run `ss -ltnp` to see which)"


def require_free(ports: dict[str, int], grace_s: float = 0.0) -> None:
    """Raise unless every port is free; wait up to `grace_s` for a process that is ending to let go."""
    deadline = time.monotonic() + grace_s
    while any(port_in_use(port) for port in ports.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    taken = [f"  port {port} ({what}) is taken by {port_holder(port)}" for what, port in ports.items()
             if port_in_use(port)]
    if taken:
        raise StackError("cannot start: a port the stack needs is in use.\n" + "\n".join(taken)
                         + "\n  Stop that process (a stack left behind by a crash: `make stop`), then try again.")


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n  last lines of {rel(log)}:\n" + "\n".join(f"    {line}" for line in tail)


# --------------------------------------------------------------------------
# Start and record
# --------------------------------------------------------------------------
def spawn(name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
          log: Path | None = None, append: bool = False, tied: bool = True) -> psutil.Process:
    """Start `argv` in a new process group, output to its log, recorded under `name`.

    `tied`: the process ends with the one that starts it (see die_with_parent),
    as for `make run`, `make serve` and the tests; `make up` starts untied ones.
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = log or LOG_DIR / f"{name}.log"
    with open(log, "ab" if append else "wb") as out:
        popen = subprocess.Popen(die_with_parent(argv) if tied else argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    record(name, popen.pid, tied)
    return psutil.Process(popen.pid)


def die_with_parent(argv: list[str]) -> list[str]:
    """`argv`, started so that it receives SIGTERM when the process that starts it dies, however it dies.

    Each process runs in a session of its own (so Ctrl+C reaches only the
    supervisor, which stops everything in order), which also means a SIGKILL
    of the supervisor's process group reaches none of them. Linux's parent-death
    signal closes that gap; a `dapr run` that gets it stops its daprd and app.
    util-linux's setpriv sets it and then runs `argv` (a Python preexec_fn would
    have to fork, and gRPC's fork handlers make that fail now and then).
    Without setpriv, `up()` still stops the leftovers of a killed command.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


def record(name: str, pid: int, tied: bool = True) -> None:
    """Write `name`'s pid file: the pid and its start time and, for a tied process, its owner's."""
    PID_DIR.mkdir(parents=True, exist_ok=True)
    owner = f" {os.getpid()} {psutil.Process().create_time()}" if tied else ""
    (PID_DIR / f"{name}.pid").write_text(f"{pid} {psutil.Process(pid).create_time()}{owner}\n")


def orphaned(name: str) -> bool:
    """Whether what was recorded under `name` outlived the command it was tied to (a hard kill of
    `make serve`, say), or its leader died and left its group running (a `kill -9` of `dapr run`
    leaves its daprd and app): leftovers that hold the stack's ports and serve no one."""
    try:
        fields = (PID_DIR / f"{name}.pid").read_text().split()
        pid, created = int(fields[0]), float(fields[1])
    except (OSError, ValueError, IndexError):
        return False
    if recorded(name) is None:
        return bool(stray_members(pid, created))
    if len(fields) < 4:
        return False  # untied: `make up` started it to outlive the command
    try:
        owner = psutil.Process(int(fields[2]))
        return not (abs(owner.create_time() - float(fields[3])) < 0.01 and alive(owner))
    except (psutil.Error, ValueError):
        return True


def stray_members(pgid: int, leader_created: float) -> list[psutil.Process]:
    """Live processes of the process group `pgid` that a dead leader started."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.create_time() >= leader_created - 0.01 and alive(process):
                members.append(process)
    return members


def recorded(name: str) -> psutil.Process | None:
    """The live process recorded under `name`, if any.

    The pid file also holds the creation time, which guards against
    signalling an unrelated process that reused the pid after ours ended.
    """
    try:
        pid_text, created = (PID_DIR / f"{name}.pid").read_text().split()[:2]
        process = psutil.Process(int(pid_text))
        if abs(process.create_time() - float(created)) < 0.01 and alive(process):
            return process
    except (FileNotFoundError, ValueError, psutil.Error):
        pass
    return None


def recorded_names() -> list[str]:
    return sorted(p.stem for p in PID_DIR.glob("*.pid")) if PID_DIR.exists() else []


# --------------------------------------------------------------------------
# Stop
# --------------------------------------------------------------------------
def stop(name: str, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the process group recorded under `name`: SIGTERM, then SIGKILL; also the rest of
    its group when its leader is already gone."""
    process = recorded(name)
    pid_file = PID_DIR / f"{name}.pid"
    if process is None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid_text, created = pid_file.read_text().split()[:2]
            for member in stray_members(int(pid_text), float(created)):
                stop_group(member, timeout_s)
        pid_file.unlink(missing_ok=True)
        return False
    pid_file.unlink(missing_ok=True)
    stop_group(process, timeout_s)
    return True


def stop_group(process: psutil.Process, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by `process` (and any descendant that left it), then SIGKILL."""
    try:
        members = [process, *process.children(recursive=True)]
        pgid = os.getpgid(process.pid)
    except (psutil.Error, ProcessLookupError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.terminate()
    _, still_alive = psutil.wait_procs(members, timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for member in still_alive:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(still_alive, timeout=5)


def interrupt_apps(cli: psutil.Process) -> list[psutil.Process]:
    """SIGINT the apps that a `dapr run` started (not its daprd), and return them.

    SIGINT, not SIGTERM: uvicorn drains on either, then re-raises the signal;
    only SIGINT becomes a KeyboardInterrupt, which lets the script's
    `finally: runner.shutdown(agent)` run (SIGTERM would end the process there).
    """
    apps = []
    with contextlib.suppress(psutil.Error):
        apps = [child for child in cli.children() if child.name() != "daprd"]
    for app in apps:
        with contextlib.suppress(psutil.Error):
            app.send_signal(signal.SIGINT)
    return apps


def stop_dapr_run(name: str, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
    """Stop a `dapr run` recorded under `name` gracefully, app first.

    On a signal, `dapr run` SIGKILLs daprd and then the app, so the app can
    neither finish its requests nor deregister itself. Instead we interrupt
    the app while its sidecar still serves it; when the app is gone, the CLI
    stops daprd and exits by itself. Whatever is left then gets stop().
    """
    cli = recorded(name)
    if cli is None:
        return stop(name)
    with contextlib.suppress(psutil.Error):
        children = cli.children()
        psutil.wait_procs(interrupt_apps(cli), timeout=timeout_s)
        cli.wait(timeout=10)
        # The CLI does not wait for the daprd it kills; its ports are free only once it is gone.
        psutil.wait_procs(children, timeout=10)
    stop(name)
    return True
