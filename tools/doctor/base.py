"""What the doctor's checks share: the shape of a finding, and small helpers.
Standard library only (see tools/doctor/checks.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Tuple

from tools.stack import settings

Result = Tuple[str, str, str]  # (status, message, fix); status is ok, todo, info, warn or FAIL
VENV_PYTHON = settings.VENV_BIN / "python"


def version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part or 0) for part in match.groups()) if match else ()


def output_of(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 15) -> str:
    """stdout plus stderr of a short command, "" if it cannot run (`java -version` prints to stderr)."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


def short(path: object) -> str:
    return str(path).replace(str(Path.home()), "~", 1)


def shown(path: Path) -> str:
    """A path as the user reads it: relative to the repository when it is inside it."""
    try:
        return str(Path(path).relative_to(settings.ROOT))
    except ValueError:
        return str(path)


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}
