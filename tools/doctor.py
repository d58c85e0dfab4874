"""Checks that this machine can run the example, one line per finding, each with its fix.

    python3 -m tools.doctor                          # every check (`make doctor`)
    python3 -m tools.doctor --quick --failures-only  # the cheap ones, problems only (`make run`)

Each line starts with a status: ok; todo (`make setup` installs it); info;
warn (works, but something is off or missing); FAIL (yours to fix: `make setup`
cannot). A line that is not ok ends with " -> " and what to do. The exit code
is 1 if any line is FAIL, else 0.

It runs before anything is installed: the standard library and tools.settings
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
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tools import settings
from tools.runtime import DaprRuntime, locate_runtime

try:  # in .venv; the system python3 that runs `make doctor` may not have it
    import yaml
except ImportError:
    yaml = None

Result = Tuple[str, str, str]  # (status, message, fix); status is ok, todo, info, warn or FAIL

VENV_PYTHON = settings.VENV_BIN / "python"
REQUIREMENTS = [settings.ROOT / "requirements.txt", settings.ROOT / "requirements-dev.txt"]
REQUIREMENTS_STAMP = settings.ROOT / ".venv" / ".requirements.sha256"  # written by scripts/setup.sh
EXPECTED_COMPONENTS = ["agent-memory", "agent-workflow", "agent-registry", "agent-pubsub",
                       "agent-secretstore", "agent-config", "llm-provider"]
SECRET_FIELDS = {"key", "apikey", "password", "redispassword"}  # compared in lower case
NEED_PYTHON = ".".join(map(str, settings.PYTHON_MIN_VERSION))


def version_tuple(text: str) -> Tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part or 0) for part in match.groups()) if match else ()


def output_of(argv: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
              timeout: float = 15) -> str:
    """stdout plus stderr of a short command, "" if it cannot run (`java -version` prints to stderr)."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
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
    """The runtime the stack would use (tools/runtime.py's rule), or None."""
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
                 "`make setup` builds them with Go (about 5 min, once per machine)")]
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
def _listening() -> Dict[int, set]:
    """Port -> inodes of the TCP sockets listening on it, from /proc/net/tcp{,6} ({} where there is no /proc)."""
    ports: Dict[int, set] = {}
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


def _pids() -> List[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()] if os.path.isdir("/proc") else []


def _socket_owners(inodes: set) -> Dict[str, int]:
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


def _stat(pid: int) -> Optional[List[str]]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _create_time(pid: int) -> Optional[float]:
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


def port_holder(port: int, owners: Optional[Dict[int, int]] = None) -> str:
    """Who listens on `port`, as 'pid N (command line)', or a fallback text."""
    pid = (owners if owners is not None else _port_owners()).get(port)
    if pid is None:
        how = "ss -ltnp" if sys.platform.startswith("linux") else f"lsof -nP -iTCP:{port} -sTCP:LISTEN"
        return f"another process (run `{how}` to see which)"
    command = _command_line(pid)
    return f"pid {pid} ({command[:120]})" if command else f"pid {pid}"


def _port_owners() -> Dict[int, int]:
    """Listening port -> pid holding it, for every port we can tell."""
    listening = _listening()
    owners = _socket_owners(set().union(*listening.values()) if listening else set())
    return {port: owners[inode] for port, inodes in listening.items() for inode in inodes if inode in owners}


def port_in_use(port: int, listening: Optional[Dict[int, set]] = None) -> bool:
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


def recorded_processes() -> Dict[int, str]:
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
def _check_resource_file(path: Path) -> Tuple[List[Result], Optional[int]]:
    """The problems in one file, and how many conversation components it holds (None: it does not parse)."""
    try:
        documents = [_mapping(doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [("FAIL", f"{shown(path)}{where}: YAML error: {problem}",
                 "fix the indentation or syntax there: spaces only, one column per block, `name: value`")], None
    except (OSError, UnicodeDecodeError) as exc:
        return [("FAIL", f"{shown(path)}: cannot be read ({exc})", "check the file's permissions and encoding")], None
    problems, conversations = [], 0
    for number, doc in enumerate(documents, start=1):
        label = shown(path) + (f" (document {number})" if len(documents) > 1 else "")
        is_component, spec = doc.get("kind") == "Component", _mapping(doc.get("spec"))
        fields = {"apiVersion": doc.get("apiVersion"), "kind": doc.get("kind"),
                  "metadata.name": _mapping(doc.get("metadata")).get("name")}
        if is_component:
            fields.update({"spec.type": spec.get("type"), "spec.version": spec.get("version")})
            conversations += str(spec.get("type")).startswith("conversation.")
        missing = [name for name, value in fields.items() if not value]
        if missing:
            problems.append(("FAIL", f"{label}: missing {', '.join(missing)}",
                             "add what is missing (resources/agent-memory.yaml is a complete component)"))
        items = spec.get("metadata") if is_component and isinstance(spec.get("metadata"), list) else []
        for item in map(_mapping, items):
            if str(item.get("name")).lower() in SECRET_FIELDS and item.get("value") not in (None, ""):
                problems.append(("FAIL", f"{label}: `{item['name']}` has a literal value, a secret in a file",
                                 "read it with secretKeyRef from agent-secretstore, like resources/llm-provider.yaml"))
    return problems, conversations


def _check_resources_here(directory: Path) -> List[Result]:
    main_files, alternatives = sorted(directory.glob("*.yaml")), sorted(directory.glob("llm/*.yaml"))
    if not main_files:
        return [("FAIL", f"no *.yaml in {shown(directory)}", "point it at the resources folder")]
    problems, conversations = [], {}
    for path in main_files + alternatives:
        file_problems, conversations[path] = _check_resource_file(path)
        problems += file_problems
    if None in conversations.values():
        return problems  # a count that skips a file which does not parse would mislead
    sets = {f"{shown(directory)}/": main_files}
    for alternative in alternatives:
        sets[f"{shown(directory)}/ with llm/{alternative.name}"] = \
            [path for path in main_files if path.name != "llm-provider.yaml"] + [alternative]
    for label, members in sets.items():
        count = sum(conversations[path] for path in members)
        if count != 1:
            problems.append(("FAIL", f"{label}: {count} conversation components, dapr-agents needs exactly one",
                             "keep one component of type conversation.* (named llm-provider) per set"))
    return problems or [("ok", f"resources: {len(conversations)} files valid, one LLM in each set Dapr loads", "")]


def check_resources(directory: Path) -> List[Result]:
    """The problems in directory/*.yaml and directory/llm/*.yaml, or one ok line.

    Each file must be a Dapr resource with no secret written in it, and each
    set of files Dapr loads together must hold exactly one conversation
    component (dapr-agents takes it as its LLM): the directory itself, and the
    directory with llm-provider.yaml swapped for a file of llm/, as `make run` does.
    Without PyYAML here, .venv/bin/python runs the same check.
    """
    directory = Path(directory).resolve()
    if yaml is not None:
        return _check_resources_here(directory)
    skipped = [("info", f"{shown(directory)}/ not checked: parsing YAML needs PyYAML, which comes with .venv",
                "`make setup`, then `make doctor` again")]
    if not VENV_PYTHON.exists():
        return skipped
    out = output_of([str(VENV_PYTHON), "-m", "tools.doctor", "--resources-json", str(directory)],
                    cwd=settings.ROOT, timeout=60)
    try:
        return [tuple(result) for result in json.loads(out)]
    except ValueError:  # .venv without PyYAML, or broken: say so rather than guess
        return skipped


def check_project_resources() -> List[Result]:
    return check_resources(settings.RESOURCES_DIR)


# --------------------------------------------------------------------------
# The LLM choice and, while the service runs, its sidecar
# --------------------------------------------------------------------------
def check_llm() -> List[Result]:
    """What `make run` and `make serve` will talk to: tools/llm.py's rule, OPENAI_BASE_URL > OPENAI_API_KEY > echo."""
    env = os.environ
    if env.get("OPENAI_BASE_URL"):
        model = env.get("OPENAI_MODEL") or "gpt-4o-mini"
        return [("info", f"LLM: OpenAI-compatible endpoint {env['OPENAI_BASE_URL']} (model {model})", "")]
    if env.get("OPENAI_API_KEY"):
        return [("info", "LLM: OpenAI (key from OPENAI_API_KEY, via the secret store)", "")]
    return [("info", "LLM: none configured, so Dapr's conversation.echo answers: the agent ECHOES your prompt "
                     "back. Set OPENAI_API_KEY (or OPENAI_BASE_URL) for a real model.",
             "export OPENAI_API_KEY, or OPENAI_BASE_URL for an OpenAI-compatible server")]


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
