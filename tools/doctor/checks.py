"""Checks that this machine can run the example, one line per finding, each with its fix.

    python3 -m tools.doctor                          # every check (`make doctor`)
    python3 -m tools.doctor --quick --failures-only  # the cheap ones, problems only (`make run`)

Each line starts with a status: ok; todo (`make setup` installs it); info;
warn (works, but something is off or missing); FAIL (yours to fix: `make setup`
cannot). A line that is not ok ends with " -> " and what to do. The exit code
is 1 if any line is FAIL, else 0.

It runs before anything is installed: the standard library and tools.stack.settings
only, so `make doctor` works on a fresh clone with the system python3. What
needs the virtualenv (dapr-agents' version, parsing YAML) runs through
.venv/bin/python when there is one. The doctor only looks: it starts, writes
and downloads nothing, so it is safe to run while a stack (yours or a test
run's) is up. `check_resources(directory)` is importable, so a test can point
it at a folder holding a broken file.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from tools.doctor.base import VENV_PYTHON, Result, _mapping, output_of, short, shown, version_tuple
from tools.doctor.port_owners import _listening, _port_owners, port_holder, port_in_use, recorded_processes, redis_ping
from tools.doctor.resources import EXPECTED_COMPONENTS, check_project_resources, check_resources, yaml
from tools.stack import settings
from tools.stack.runtime import DaprRuntime, locate_runtime

REQUIREMENTS = [settings.ROOT / "requirements.txt", settings.ROOT / "requirements-dev.txt"]
REQUIREMENTS_STAMP = settings.ROOT / ".venv" / ".requirements.sha256"  # written by scripts/setup.sh
NEED_PYTHON = ".".join(map(str, settings.PYTHON_MIN_VERSION))


# --------------------------------------------------------------------------
# Python and the virtualenv
# --------------------------------------------------------------------------
def check_python() -> List[Result]:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:len(settings.PYTHON_MIN_VERSION)] < settings.PYTHON_MIN_VERSION:
        redo = ("`rm -rf .venv && make PYTHON=python{0} setup`" if VENV_PYTHON.exists()
                else "`make PYTHON=python{0} setup`")
        return [("FAIL", f"Python {version} ({sys.executable}) is too old: dapr-agents "
                         f"{settings.DAPR_AGENTS_VERSION} needs >= {NEED_PYTHON}",
                 f"install Python {NEED_PYTHON}+, then " + redo.format(NEED_PYTHON))]
    return [("ok", f"Python {version} ({sys.executable}; dapr-agents {settings.DAPR_AGENTS_VERSION} "
                   f"needs >= {NEED_PYTHON})", "")]


def _requirements_hash() -> str:
    """What scripts/setup.sh writes to .venv/.requirements.sha256: `cat requirements*.txt | sha256sum`."""
    digest = hashlib.sha256()
    for path in REQUIREMENTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()


_VENV_PROBE = """
import importlib.metadata as m, sys
try:
    agents = m.version("dapr-agents")
except m.PackageNotFoundError:
    agents = "not installed"
print(".".join(map(str, sys.version_info[:3])), agents)
"""


def check_venv() -> List[Result]:
    if not VENV_PYTHON.exists():
        return [("todo", f".venv with requirements-dev.txt (dapr-agents {settings.DAPR_AGENTS_VERSION})",
                 "`make setup` installs it")]
    try:
        stamp_ok = REQUIREMENTS_STAMP.read_text().strip() == _requirements_hash()
    except OSError:
        stamp_ok = False
    if not stamp_ok:  # setup.sh reinstalls whenever requirements*.txt changed since its last install
        return [("todo", ".venv is older than requirements*.txt", "`make setup` brings it up to date")]
    probe = output_of([str(VENV_PYTHON), "-c", _VENV_PROBE]).split()
    if len(probe) < 2:
        return [("FAIL", ".venv/bin/python does not run", "`rm -rf .venv`, then `make setup`")]
    python, agents = probe[0], " ".join(probe[1:])
    if agents != settings.DAPR_AGENTS_VERSION:
        return [("FAIL", f"dapr-agents {agents} in .venv, expected {settings.DAPR_AGENTS_VERSION}",
                 "`.venv/bin/pip install -r requirements-dev.txt`")]
    return [("ok", f"dapr-agents {agents} in .venv (Python {python})", "")]


# --------------------------------------------------------------------------
# What `make setup` installs: Redis, the Dapr runtime and CLI (built with Go), Zipkin
# --------------------------------------------------------------------------
def _system_installer() -> Optional[str]:
    """How scripts/setup.sh would install redis-server here, None if it cannot."""
    if shutil.which("apt-get") and (os.geteuid() == 0 or shutil.which("sudo")):
        return "apt-get"
    if shutil.which("brew"):
        return "Homebrew"
    return None


def check_redis() -> List[Result]:
    server = shutil.which("redis-server")
    if server is None:
        installer = _system_installer()
        if installer:
            return [("todo", "redis-server", f"`make setup` installs it with {installer}")]
        return [("FAIL", "redis-server not found, and `make setup` cannot install it here",
                 "install Redis 6 or newer with your package manager (as root: `apt-get install redis-server`)")]
    version = version_tuple(" ".join(re.findall(r"v=(\S+)", output_of([server, "--version"]))))
    text = ".".join(map(str, version)) or "(version unknown)"
    if version and version < (6,):
        return [("FAIL", f"Redis {text} is too old: the example needs 6 or newer", "install a newer redis-server")]
    return [("ok", f"redis-server {text} ({server})", "")]


def _version_of(binary: Path) -> str:
    return ".".join(map(str, version_tuple(output_of([str(binary), "--version"]))))


@functools.lru_cache(maxsize=None)
def find_runtime() -> Optional[DaprRuntime]:
    """The runtime the stack would use (tools/stack/runtime.py's rule), or None."""
    return locate_runtime()


def check_go() -> List[Result]:
    need = settings.GO_MIN_VERSION
    go = shutil.which("go")
    # GOTOOLCHAIN=local: report the Go installed here, and never let `go` download another one.
    reported = output_of([go, "env", "GOVERSION"], dict(os.environ, GOTOOLCHAIN="local")) if go else ""
    version = reported.strip()[2:] if re.match(r"go\d", reported) else ""
    if version and version_tuple(version) >= version_tuple(need):
        return [("ok", f"Go {version} (the Dapr runtime build needs >= {need})", "")]
    if find_runtime() is not None:
        what = f"Go {version} is older than {need}" if version else "Go not found"
        return [("ok", f"{what}: not needed, the Dapr runtime is already installed", "")]
    problem, fix = (f"Go {version} is too old", "install a newer Go") if version else ("Go not found", "install Go")
    return [("FAIL", f"{problem}: the Dapr runtime build needs Go >= {need}",
             f"{fix} (https://go.dev/dl), then `make setup`")]


def check_dapr() -> List[Result]:
    runtime = find_runtime()
    if runtime is None:
        return [("todo", f"Dapr runtime {settings.DAPR_RUNTIME_VERSION} and CLI {settings.DAPR_CLI_VERSION}",
                 "`make setup` builds them with Go (minutes, once per machine)")]
    from_dapr_init = runtime.runtime_path is None
    # `make setup` skips an existing build, so a wrong one has to be removed first.
    rebuild = (f"`dapr init --slim --runtime-version {settings.DAPR_RUNTIME_VERSION}`" if from_dapr_init
               else f"`rm -rf {short(runtime.runtime_path)}`, then `make setup`")
    daprd = _version_of(runtime.bin_dir / "daprd")
    same_minor = daprd.rsplit(".", 1)[0] == settings.DAPR_RUNTIME_VERSION.rsplit(".", 1)[0]
    if daprd == settings.DAPR_RUNTIME_VERSION or (from_dapr_init and same_minor):
        results = [("ok", f"Dapr runtime {daprd} in {short(runtime.bin_dir)}", "")]
    else:
        results = [("FAIL", f"Dapr runtime {daprd or '(version unknown)'} in {short(runtime.bin_dir)}, "
                            f"expected {settings.DAPR_RUNTIME_VERSION}", rebuild)]
    match = re.search(r"CLI version:\s*(\S+)", output_of([str(runtime.cli), "--version"], runtime.env()))
    cli = match.group(1) if match else "(version unknown)"
    if cli == settings.DAPR_CLI_VERSION:
        results.append(("ok", f"Dapr CLI {cli} ({short(runtime.cli)})", ""))
    elif from_dapr_init:  # your own CLI beside your `dapr init` runtime is your choice: only a warning
        results.append(("warn", f"Dapr CLI {cli} ({short(runtime.cli)}); the example pins {settings.DAPR_CLI_VERSION}",
                        "usually fine; if `dapr run` misbehaves, install that version"))
    else:
        results.append(("FAIL", f"Dapr CLI {cli} ({short(runtime.cli)}), expected {settings.DAPR_CLI_VERSION}",
                        rebuild))
    return results


def check_java() -> List[Result]:
    java = shutil.which("java")
    if java is None:
        return [("warn", "Java not found: tracing (Zipkin) will be off",
                 "apt-get install openjdk-17-jre-headless maven, then `make setup`")]
    match = re.search(r'version "(?:1\.)?(\d+)', output_of([java, "-version"]))  # "1.8.0" is Java 8
    major = int(match.group(1)) if match else 0
    if major < 17:  # the stack would still start Zipkin, which then fails: say it now
        return [("warn", f"Java {major or '(unknown)'} is too old for Zipkin (needs 17+): tracing will fail",
                 "apt-get install openjdk-17-jre-headless")]
    if not settings.ZIPKIN_JAR.exists():
        if shutil.which("mvn"):
            return [("todo", f"Zipkin {settings.ZIPKIN_VERSION} jar (Java {major} is here)",
                     "`make setup` fetches it from Maven Central (about 135 MB, once per machine)")]
        return [("warn", f"Java {major}, but no Maven to fetch the Zipkin jar: tracing will be off",
                 "apt-get install maven, then `make setup`")]
    return [("ok", f"Java {major} and Zipkin {settings.ZIPKIN_VERSION} (tracing on)", "")]


# --------------------------------------------------------------------------
# Ports: free, held by this stack, or held by someone else (named from /proc)
# --------------------------------------------------------------------------
SERVE_ONLY = {"zipkin", *(f"service {what}" for what in settings.SERVICE_PORTS)}  # `make run` needs none of these


def check_ports(quick: bool = False) -> List[Result]:
    """Every port of settings.STACK_PORTS and SERVICE_PORTS: free, this stack's, or whose.

    In quick mode (`make run`) a stranger on a port only `make serve` and `make test` need is a warning.
    """
    wanted = {**settings.STACK_PORTS, **{f"service {what}": port for what, port in settings.SERVICE_PORTS.items()}}
    listening = _listening()
    in_use = {what: port for what, port in wanted.items() if port_in_use(port, listening)}
    owners = _port_owners() if in_use else {}
    ours = recorded_processes() if in_use else {}
    lines: Dict[Result, List[str]] = {}  # one line per finding, listing the ports it applies to
    for what, port in wanted.items():
        holder = ours.get(owners.get(port, -1))
        named = f"{port} ({what})"  # a problem names what each port is for
        if what not in in_use:
            finding, named = ("ok", "free", ""), str(port)
        elif holder in ("service", "minimal"):
            finding = ("info", "in use by this stack's running app", "`make stop` (`make serve` needs them free)")
        elif holder is not None:
            finding, named = ("ok", "in use by this stack (`make stop` stops it)", ""), str(port)
        elif port == settings.REDIS_PORT and redis_ping(port):
            finding = ("warn", f"a Redis this stack did not start, {port_holder(port, owners)}, will be reused",
                       "fine; live configuration updates need `redis-cli CONFIG SET notify-keyspace-events KA`")
        else:
            serve_only = what in SERVE_ONLY
            finding = ("warn" if quick and serve_only else "FAIL", f"in use by {port_holder(port, owners)}",
                       "stop that process (" + ("`make serve` and `make test` need it" if serve_only
                                                else "every command needs it")
                       + "); if a crashed run of this clone left it: `make stop`")
        lines.setdefault(finding, []).append(named)
    order = {"ok": 0, "info": 1, "warn": 2, "FAIL": 3}
    results = [(status, f"port{'s' * (len(ports) > 1)} {', '.join(ports)}{':' * (status != 'ok')} {text}", fix)
               for (status, text, fix), ports in lines.items()]
    return sorted(results, key=lambda result: order[result[0]])  # what is fine first, then the problems


# --------------------------------------------------------------------------
# resources/*.yaml (PyYAML: here if importable, else through .venv/bin/python)
# --------------------------------------------------------------------------
# --------------------------------------------------------------------------
# The LLM choice and, while the service runs, its sidecar
# --------------------------------------------------------------------------
def check_llm() -> List[Result]:
    """What `make run` and `make serve` will talk to: tools/stack/llm.py's rule,
    OPENAI_BASE_URL > OPENAI_API_KEY > echo."""
    env = os.environ
    if env.get("OPENAI_BASE_URL"):
        model = env.get("OPENAI_MODEL") or "gpt-4o-mini"
        return [("info", f"LLM: OpenAI-compatible endpoint {env['OPENAI_BASE_URL']} (model {model})", "")]
    if env.get("OPENAI_API_KEY"):
        return [("info", "LLM: OpenAI (key from OPENAI_API_KEY, via the secret store)", "")]
    local = "set up" if settings.local_model_installed() else "built on first use"
    return [("info", "LLM: none configured, so Dapr's conversation.echo answers: the agent ECHOES your prompt "
                     f"back. For a real model: LLM=local (SmolLM2-135M on this machine, {local}), or set "
                     "OPENAI_API_KEY (or OPENAI_BASE_URL).",
             "make run LLM=local, or export OPENAI_API_KEY, or OPENAI_BASE_URL for an OpenAI-compatible server")]


def check_sidecar() -> List[Result]:
    port = settings.SIDECAR_HTTP_PORT
    if not port_in_use(port):
        return [("info", f"no sidecar on :{port}, loaded components not checked",
                 "run the doctor while `make serve` runs to check them")]
    request = urllib.request.Request(settings.SIDECAR_URL + "/v1.0/metadata")
    if os.environ.get("DAPR_API_TOKEN"):  # a secure-mode sidecar answers only with it
        request.add_header("dapr-api-token", os.environ["DAPR_API_TOKEN"])
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            metadata = _mapping(json.loads(response.read().decode()))
    except (OSError, ValueError) as exc:  # urllib's errors are OSErrors
        return [("warn", f"port {port} answers no Dapr metadata ({exc})",
                 f"is it a sidecar? it is {port_holder(port)}")]
    if metadata.get("id") != settings.SERVICE_APP_ID:
        return [("info", f"the sidecar on :{port} is app `{metadata.get('id')}`, not ours; skipped", "")]
    loaded = {c.get("name"): c.get("type") for c in map(_mapping, metadata.get("components") or [])}
    missing = [name for name in EXPECTED_COMPONENTS if name not in loaded]
    if missing:
        return [("FAIL", f"the service's sidecar has not loaded {', '.join(missing)}",
                 f"its log says why: {shown(settings.LOG_DIR / 'service.log')}; fix it, then restart `make serve`")]
    return [("ok", f"the service's sidecar loaded all {len(EXPECTED_COMPONENTS)} components "
                   f"(llm-provider is {loaded['llm-provider']})", "")]


ALL_CHECKS = [check_python, check_venv, check_redis, check_go, check_dapr, check_java, check_ports,
              check_project_resources, check_llm, check_sidecar]
# `make run`, after `make setup`: no Go, Java, Dapr or HTTP.
QUICK_CHECKS = [check_python, check_venv, check_redis, functools.partial(check_ports, quick=True),
                check_project_resources]
PROBLEMS = ("todo", "warn", "FAIL")  # what --failures-only prints


def format_line(status: str, message: str, fix: str) -> str:
    return f"{status:<6}{message}" + (f" -> {fix}" if fix and status != "ok" else "")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tools.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the cheap checks: Python, .venv, Redis, "
                                                             "ports, resources")
    parser.add_argument("--failures-only", action="store_true", help="print only todo, warn and FAIL lines")
    parser.add_argument("--resources-json", metavar="DIR", help=argparse.SUPPRESS)  # check_resources via .venv
    args = parser.parse_args(argv)
    if args.resources_json:  # never passes the work on again: without PyYAML here, no answer
        if yaml is None:
            return 1
        print(json.dumps(check_resources(Path(args.resources_json))))
        return 0
    failed = False
    for check in QUICK_CHECKS if args.quick else ALL_CHECKS:
        try:
            results = check()
        except Exception as exc:  # a bug in one check must not hide the others
            results = [("FAIL", f"a check crashed: {exc!r}", "report it; the other checks still ran")]
        for status, message, fix in results:
            if not args.failures_only or status in PROBLEMS:
                print(format_line(status, message, fix), flush=True)
            failed = failed or status == "FAIL"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
