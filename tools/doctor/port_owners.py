"""Who listens on a port, and which processes this stack recorded, read from /proc.
Standard library only, so that `make doctor` can tell before anything is installed."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from tools.stack import settings


def _listening() -> dict[int, set]:
    """Port -> inodes of the TCP sockets listening on it, from /proc/net/tcp{,6} ({} where there is no /proc)."""
    ports: dict[int, set] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A":  # 0A: LISTEN
                ports.setdefault(int(fields[1].rsplit(":", 1)[1], 16), set()).add(fields[9])
    return ports


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()] if os.path.isdir("/proc") else []


def _socket_owners(inodes: set) -> dict[str, int]:
    """Socket inode -> pid of a process holding it (only the processes we may read: all of them as root)."""
    wanted, owners = {f"socket:[{inode}]": inode for inode in inodes}, {}
    for pid in _pids():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                if inode is not None:
                    owners.setdefault(inode, pid)
        except OSError:  # gone, or not ours to read
            continue
    return owners


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _create_time(pid: int) -> float | None:
    """Seconds since the epoch, as psutil's Process.create_time() computes it on Linux."""
    fields = _stat(pid)
    try:
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK") if fields else None
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _command_line(pid: int) -> str:
    try:
        return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
    except OSError:
        return ""


def port_holder(port: int, owners: dict[int, int] | None = None) -> str:
    """Who listens on `port`, as 'pid N (command line)', or a fallback text."""
    pid = (owners if owners is not None else _port_owners()).get(port)
    if pid is None:
        how = "ss -ltnp" if sys.platform.startswith("linux") else f"lsof -nP -iTCP:{port} -sTCP:LISTEN"
        return f"another process (run `{how}` to see which)"
    command = _command_line(pid)
    return f"pid {pid} ({command[:120]})" if command else f"pid {pid}"


def _port_owners() -> dict[int, int]:
    """Listening port -> pid holding it, for every port we can tell."""
    listening = _listening()
    owners = _socket_owners(set().union(*listening.values()) if listening else set())
    return {port: owners[inode] for port, inodes in listening.items() for inode in inodes if inode in owners}


def port_in_use(port: int, listening: dict[int, set] | None = None) -> bool:
    if listening and port in listening:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def redis_ping(port: int = settings.REDIS_PORT) -> bool:
    """A Redis answers on `port`, with or without a password."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def recorded_processes() -> dict[int, str]:
    """Pid -> name, for each live process this stack recorded in settings.PID_DIR and everything it started.

    A pid file holds "<pid> <create_time>"; the time guards against a pid that
    an unrelated process reused. The stack starts each service in its own
    session, so its children (daprd and the app beside `dapr run`) share it.
    """
    recorded = {}
    for pid_file in sorted(settings.PID_DIR.glob("*.pid")) if settings.PID_DIR.is_dir() else []:
        try:
            pid_text, created = pid_file.read_text().split()[:2]  # then the owner, for a tied process
            pid, created_at = int(pid_text), float(created)
        except (OSError, ValueError):
            continue
        started = _create_time(pid)
        if started is not None and abs(started - created_at) < 1.0:
            recorded[pid] = pid_file.stem
    if not recorded:
        return {}
    stats = {pid: _stat(pid) for pid in _pids()}
    parents = {pid: int(fields[1]) for pid, fields in stats.items() if fields}
    sessions = {pid: int(fields[3]) for pid, fields in stats.items() if fields}
    ours = {}
    for pid in parents:
        ancestor, seen = pid, 0
        while ancestor > 1 and ancestor not in recorded and seen < 64:  # walk up to a recorded one, if any
            ancestor, seen = parents.get(ancestor, 0), seen + 1
        owner = ancestor if ancestor in recorded else sessions.get(pid)
        if owner in recorded:
            ours[pid] = recorded[owner]
    return ours
