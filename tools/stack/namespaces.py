"""Private network and PID namespaces, so that several stacks run side by side on one machine.

A stack's ports are fixed (tools/stack/stack.env), and the Dapr CLI refuses a port that any
visible daprd names on its command line, even one in another network namespace. So a second
stack needs its own network namespace (its own loopback, the same port numbers) and its own PID
namespace (it sees only its own processes). `unshare` makes both; it needs root.
`make test` runs its test groups this way, and `make switch-offs` its throw-away copies.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path


def available() -> bool:
    """Whether this process may make private namespaces (root, and `unshare` works here)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0


def inside(directory: Path, argv: list[str], folder_over: tuple[Path, Path] | None = None) -> list[str]:
    """`argv`, run in `directory` in a private network namespace (only loopback, brought up) and PID
    namespace. When `unshare` ends, the namespace's first process is killed, and everything in it.
    `folder_over` (source, target): inside, `target` shows `source` (a bind mount in the private mount
    namespace that --mount-proc makes), so a stack's state folder has its usual path there."""
    bind = 'mount --bind "$1" "$2" && ' if folder_over else ""
    script = f'ip link set lo up && {bind}cd "$0" && shift 2 && exec "$@"'
    source, target = folder_over or ("", "")
    return ["unshare", "-n", "-p", "-f", "--kill-child", "--mount-proc",
            "sh", "-c", script, str(directory), str(source), str(target), *argv]


def killed_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL the child when its parent dies, even by SIGKILL (`unshare` ignores
    SIGTERM while it waits for the namespace's first process, which --kill-child then kills)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # the parent died before it was armed
            os._exit(1)

    return preexec


def side_by_side() -> int:
    """How many stacks run side by side (`make test`'s groups, `make switch-offs`' copies): most of a
    test's time is spent waiting (on a sidecar, a timer, a scripted LLM), so three share two cores."""
    return max(1, int(os.environ.get("TDA_SIDE_BY_SIDE", "3")))
