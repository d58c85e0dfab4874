"""Finding the Dapr runtime (daprd, placement, scheduler, sentry) and the `dapr` CLI.

A `dapr init --slim` install of the pinned minor version is used as it is;
otherwise the one `scripts/install-dapr.sh` built into the per-machine cache, with our
fixes from Dapr 1.18.3 (scripts/patches/), or without them when TDA_DAPR_PATCHES=none.
Standard library only at import: `make doctor` uses it before set-up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools.stack.settings import (
    BUILT_RUNTIME_PREFIXES,
    DAPR_BUILD_RECIPE,
    DAPR_PATCH_SET,
    DAPR_PATCHES,
    DAPR_RUNTIME_VERSION,
    TDA_HOME,
    VENV_BIN,
)


@dataclass
class DaprRuntime:
    cli: Path
    runtime_path: Path | None  # parent of `.dapr`; None means the CLI's default (~/.dapr)
    bin_dir: Path
    origin: str

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment in which the README's `dapr` and `python` commands find our binaries."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join([str(VENV_BIN), str(self.cli.parent), env.get("PATH", "")])
        if self.runtime_path is not None:
            env["DAPR_RUNTIME_PATH"] = str(self.runtime_path)
        return env


def version_of(binary: Path) -> str:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else ""


def locate_runtime() -> DaprRuntime | None:
    """A `dapr init --slim` install of the same minor version, else our own current build, else None."""
    minor = DAPR_RUNTIME_VERSION.rsplit(".", 1)[0]
    home_bin = Path.home() / ".dapr" / "bin"
    home_cli = shutil.which("dapr")
    if DAPR_PATCHES not in ("all", "none"):
        raise ValueError(f"TDA_DAPR_PATCHES must be all (the default: our fixes from Dapr 1.18.3) or none, "
                         f"not {DAPR_PATCHES!r}")
    if (DAPR_PATCHES == "all" and home_cli and all((home_bin / b).exists() for b in ("daprd", "placement", "scheduler"))
            and version_of(home_bin / "daprd").startswith(minor + ".")):
        return DaprRuntime(Path(home_cli), None, home_bin, f"your `dapr init` install in {home_bin.parent}")
    for prefix in BUILT_RUNTIME_PREFIXES:
        if build_is_current(prefix):
            # (The docs' sample outputs show this line: the usual build keeps its words.)
            fixes = " without our fixes from 1.18.3," if DAPR_PATCH_SET == "none" else ""
            return DaprRuntime(prefix / "bin" / "dapr", prefix, prefix / ".dapr" / "bin",
                               f"Dapr {DAPR_RUNTIME_VERSION}{fixes} built from source in {prefix}")
    return None


def find_runtime() -> DaprRuntime:
    """locate_runtime(), or an error that says how to install it."""
    from tools.stack.processes import StackError  # psutil: not for the doctor's import

    runtime = locate_runtime()
    if runtime is not None:
        return runtime
    if any((prefix / ".complete").exists() for prefix in BUILT_RUNTIME_PREFIXES):
        raise StackError(f"the Dapr runtime {DAPR_RUNTIME_VERSION} in {TDA_HOME} was built by an older recipe "
                         f"of this example (recipe {DAPR_BUILD_RECIPE} is current). Run `make setup` to build it "
                         "again (quick with a warm Go cache).")
    if DAPR_PATCH_SET == "none":
        raise StackError(f"the Dapr runtime {DAPR_RUNTIME_VERSION} without our fixes from 1.18.3 "
                         f"(TDA_DAPR_PATCHES=none) is not installed in {BUILT_RUNTIME_PREFIXES[-1]}. Build it with "
                         "`TDA_DAPR_PATCHES=none make setup` (a few minutes, once per machine).")
    raise StackError(f"the Dapr runtime {DAPR_RUNTIME_VERSION} with our fixes from 1.18.3 (patch set "
                     f"{DAPR_PATCH_SET}) is not installed. Run `make setup` "
                     "(it builds it from the Go module proxy; a few minutes, once per machine; a change of "
                     "scripts/patches/ builds it again).")


def build_is_current(prefix: Path) -> bool:
    """Our build in `prefix` is whole (its stamp is written last), of the current recipe and patch set (a
    build without patches may predate the stamp's "patches" line)."""
    try:
        stamp = (prefix / ".complete").read_text().split("\n")
    except OSError:
        return False
    return f"recipe {DAPR_BUILD_RECIPE}" in stamp and (DAPR_PATCH_SET == "none" or f"patches {DAPR_PATCH_SET}" in stamp)
