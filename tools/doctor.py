"""Checks that this machine can run the example, one line per finding, each with its fix.

    .venv/bin/python -m tools.doctor           # every check
    .venv/bin/python -m tools.doctor --quick   # the cheap ones: Python, Redis, ports, resources

Each line starts with ok, warn, FAIL or info; a line that is not ok ends with
" -> " and what to do. The exit code is 1 if any line is FAIL, else 0.

The doctor only looks: it starts, writes and downloads nothing, so it is safe
to run while a stack (yours or a test run's) is up. `check_resources(directory)`
is importable, so a test can point it at a folder holding a broken file.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Tuple

import psutil
import yaml

from tools import stack

Result = Tuple[str, str, str]  # (status, message, fix); status is ok, warn, FAIL or info

AGENTS_VERSION = "1.0.9"  # the pin in requirements.txt
GO_MIN_VERSION = "1.26.5"  # GO_MIN_VERSION in scripts/install-dapr.sh: the go directive of dapr/dapr
ZIPKIN_JAR = stack.TDA_HOME / "zipkin" / f"zipkin-server-{stack.ZIPKIN_VERSION}-exec.jar"
SERVICE_APP_ID = stack.SERVICE_APP[stack.SERVICE_APP.index("--app-id") + 1]
SIDECAR_PORT = stack.SERVICE_PORTS["sidecar HTTP"]
EXPECTED_COMPONENTS = ["agent-memory", "agent-workflow", "agent-registry", "agent-pubsub",
                       "agent-secretstore", "agent-config", "llm-provider"]
SECRET_FIELDS = {"key", "apikey", "password", "redispassword"}  # compared in lower case


def version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part or 0) for part in match.groups()) if match else ()


def output_of(argv: list[str], env: dict[str, str] | None = None) -> str:
    """stdout plus stderr of a short command, "" if it cannot run (`java -version` prints to stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


def short(path: object) -> str:
    return str(path).replace(str(Path.home()), "~", 1)


def shown(path: Path) -> str:
    """A path as the user reads it: relative to the repository when it is inside it."""
    return str(path.relative_to(stack.ROOT) if path.is_relative_to(stack.ROOT) else path)


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


@functools.lru_cache(maxsize=None)
def installed_runtime() -> stack.DaprRuntime | None:
    try:
        return stack.find_runtime()
    except stack.StackError:
        return None


def check_python() -> list[Result]:
    version = ".".join(map(str, sys.version_info[:3]))
    results = [("ok", f"Python {version} (dapr-agents {AGENTS_VERSION} needs >= 3.11)", "")]
    if sys.version_info < (3, 11):
        results = [("FAIL", f"Python {version} is too old: dapr-agents {AGENTS_VERSION} needs >= 3.11",
                    "install Python 3.11+, then `rm -rf .venv && make PYTHON=python3.11 setup`")]
    try:
        installed = importlib.metadata.version("dapr-agents")
    except importlib.metadata.PackageNotFoundError:
        installed = "not installed"
    if installed == AGENTS_VERSION:
        return results + [("ok", f"dapr-agents {installed} in {short(sys.prefix)}", "")]
    # `make setup` alone may not notice: it reinstalls only when the requirements files change.
    return results + [("FAIL", f"dapr-agents {installed} in {short(sys.prefix)}, expected {AGENTS_VERSION}",
                       "`make setup`; if it does nothing, `.venv/bin/pip install -r requirements-dev.txt`")]


def check_go() -> list[Result]:
    go = shutil.which("go")
    # GOTOOLCHAIN=local: report the Go installed here, and never let `go` download another one.
    reported = output_of([go, "env", "GOVERSION"], {**os.environ, "GOTOOLCHAIN": "local"}) if go else ""
    version = reported.strip()[2:] if re.match(r"go\d", reported) else ""
    if version and version_tuple(version) >= version_tuple(GO_MIN_VERSION):
        return [("ok", f"Go {version} (the Dapr runtime build needs >= {GO_MIN_VERSION})", "")]
    if installed_runtime() is not None:
        what = f"Go {version} is older than {GO_MIN_VERSION}" if version else "Go not found"
        return [("ok", f"{what}: not needed, the Dapr runtime is already installed", "")]
    problem, fix = (f"Go {version} is too old", "install a newer Go") if version else ("Go not found", "install Go")
    return [("FAIL", f"{problem}: the Dapr runtime build needs Go >= {GO_MIN_VERSION}",
             f"{fix} (https://go.dev/dl), then `make setup`")]


def check_java() -> list[Result]:
    java = shutil.which("java")
    if java is None:
        return [("warn", "Java not found: tracing (Zipkin) will be off",
                 "apt-get install openjdk-17-jre-headless maven, then `make setup`")]
    match = re.search(r'version "(?:1\.)?(\d+)', output_of([java, "-version"]))  # "1.8.0" is Java 8
    major = int(match.group(1)) if match else 0
    if major < 17:  # the stack would still start Zipkin, which then fails: say it now
        return [("warn", f"Java {major or '(unknown)'} is too old for Zipkin (needs 17+): tracing will fail",
                 "apt-get install openjdk-17-jre-headless")]
    if not ZIPKIN_JAR.exists():
        fix = "`make setup`" if shutil.which("mvn") else "apt-get install maven, then `make setup` (Maven fetches it)"
        return [("warn", f"Java {major}, but no Zipkin jar at {short(ZIPKIN_JAR)}: tracing will be off", fix)]
    return [("ok", f"Java {major} and Zipkin {stack.ZIPKIN_VERSION} (tracing on)", "")]


def check_redis() -> list[Result]:
    server = shutil.which("redis-server")
    if server is None:
        return [("FAIL", "redis-server not found", "`make setup` (or `apt-get install redis-server`)")]
    version = version_tuple(" ".join(re.findall(r"v=(\S+)", output_of([server, "--version"]))))
    shown = ".".join(map(str, version)) or "(version unknown)"
    if version and version < (6,):
        return [("FAIL", f"Redis {shown} is too old: the example needs 6 or newer", "install a newer redis-server")]
    return [("ok", f"redis-server {shown} ({server})", "")]


def check_dapr() -> list[Result]:
    runtime = installed_runtime()
    if runtime is None:
        return [("FAIL", f"the Dapr runtime {stack.DAPR_RUNTIME_VERSION} is not installed",
                 "`make setup` (builds it with Go: a few minutes, once per machine)")]
    from_dapr_init = runtime.runtime_path is None  # find_runtime() accepts a `dapr init` of the same minor
    # `make setup` skips an existing build, so a wrong one has to be removed first.
    rebuild = (f"`dapr init --slim --runtime-version {stack.DAPR_RUNTIME_VERSION}`" if from_dapr_init
               else f"`rm -rf {short(runtime.runtime_path)}`, then `make setup`")
    daprd = ".".join(map(str, version_tuple(output_of([str(runtime.bin_dir / "daprd"), "--version"]))))
    same_minor = daprd.rsplit(".", 1)[0] == stack.DAPR_RUNTIME_VERSION.rsplit(".", 1)[0]
    if daprd == stack.DAPR_RUNTIME_VERSION or (from_dapr_init and same_minor):
        results = [("ok", f"Dapr runtime {daprd} in {short(runtime.bin_dir)}", "")]
    else:
        results = [("FAIL", f"Dapr runtime {daprd or '(version unknown)'} in {short(runtime.bin_dir)}, "
                            f"expected {stack.DAPR_RUNTIME_VERSION}", rebuild)]
    match = re.search(r"CLI version:\s*(\S+)", output_of([str(runtime.cli), "--version"], runtime.env()))
    cli = match.group(1) if match else "(version unknown)"
    if cli == stack.DAPR_CLI_VERSION:
        results.append(("ok", f"Dapr CLI {cli} ({short(runtime.cli)})", ""))
    elif from_dapr_init:  # your own CLI beside your `dapr init` runtime is your choice: only a warning
        results.append(("warn", f"Dapr CLI {cli} ({short(runtime.cli)}); the example pins {stack.DAPR_CLI_VERSION}",
                        "usually fine; if `dapr run` misbehaves, install that version"))
    else:
        results.append(("FAIL", f"Dapr CLI {cli} ({short(runtime.cli)}), expected {stack.DAPR_CLI_VERSION}", rebuild))
    return results


def _ports_of_this_stack() -> dict[int, str]:
    """Port -> name of the process this stack recorded (or a child of it) that listens there."""
    owners = {}
    for name in ("redis", "placement", "scheduler", "zipkin", "service", "minimal"):
        process = stack.recorded(name)
        with contextlib.suppress(psutil.Error):  # children too: `dapr run` is recorded, its daprd and app listen
            owners.update({p.pid: name for p in [process, *process.children(recursive=True)]} if process else {})
    with contextlib.suppress(psutil.Error):  # e.g. macOS without root: then we cannot tell
        return {c.laddr.port: owners[c.pid] for c in psutil.net_connections("inet")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.pid in owners}
    return {}


def check_ports() -> list[Result]:
    # Every command needs the first group; only `make serve` and `make test` need Zipkin and the service's ports.
    for_all = {"redis": stack.REDIS_PORT, "placement": stack.PLACEMENT_PORT,
               "placement health": stack.PLACEMENT_HEALTHZ_PORT, "placement metrics": stack.PLACEMENT_METRICS_PORT,
               "scheduler": stack.SCHEDULER_PORT, "scheduler health": stack.SCHEDULER_HEALTHZ_PORT,
               "scheduler metrics": stack.SCHEDULER_METRICS_PORT, "scheduler etcd": stack.SCHEDULER_ETCD_CLIENT_PORT,
               "scheduler etcd peer": stack.SCHEDULER_ETCD_PEER_PORT}
    for_serve = {"zipkin": stack.ZIPKIN_PORT, **{f"service {what}": port for what, port in stack.SERVICE_PORTS.items()}}
    ours = _ports_of_this_stack()
    lines: dict[Result, list[str]] = {}  # one line per finding, listing the ports it applies to
    for what, port in {**for_all, **for_serve}.items():
        if not stack.port_in_use(port):
            finding = ("ok", "free", "")
        elif ours.get(port) in ("service", "minimal"):
            finding = ("warn", "in use by this stack's running app", "`make stop` (`make serve` needs them free)")
        elif port in ours:
            finding = ("ok", "in use by this stack (`make stop` to stop it)", "")
        elif port == stack.REDIS_PORT and stack.redis_ping():
            finding = ("warn", f"(redis): a Redis this stack did not start, {stack.port_holder(port)}, will be reused",
                       "fine; live configuration updates need `redis-cli CONFIG SET notify-keyspace-events KA`")
        else:
            status, needs = (("FAIL", "every command needs it") if what in for_all
                             else ("warn", "`make serve` and `make test` need it"))
            finding = (status, f"({what}) is in use by {stack.port_holder(port)}",
                       f"stop that process ({needs}); if a crashed run left it: `make stop`")
        lines.setdefault(finding, []).append(str(port))
    results = [(status, f"port{'s' * (len(ports) > 1)} {', '.join(ports)} {text}", fix)
               for (status, text, fix), ports in lines.items()]
    return sorted(results, key=lambda result: result[0] != "ok")  # what is fine first, then the problems


def _check_resource_file(path: Path) -> tuple[list[Result], int | None]:
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


def check_resources(directory: Path) -> list[Result]:
    """The problems in directory/*.yaml and directory/llm/*.yaml, or one ok line.

    Each file must be a Dapr resource with no secret written in it, and each
    set of files Dapr loads together must hold exactly one conversation
    component (dapr-agents takes it as its LLM): the directory itself, and the
    directory with llm-provider.yaml swapped for a file of llm/, as `make run` does.
    """
    directory = Path(directory).resolve()
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


def check_llm() -> list[Result]:
    """What `make run` and `make serve` will talk to (the decision only: nothing is written)."""
    choice = stack.describe_llm(dict(os.environ))
    fix = "export OPENAI_API_KEY, or OPENAI_BASE_URL for an OpenAI-compatible server" if choice.name == "echo" else ""
    return [("info", choice.banner, fix)]


def check_sidecar() -> list[Result]:
    if not stack.port_in_use(SIDECAR_PORT):
        return [("info", f"no sidecar on :{SIDECAR_PORT}, loaded components not checked",
                 "run the doctor while `make serve` runs to check them")]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{SIDECAR_PORT}/v1.0/metadata", timeout=3) as response:
            metadata = _mapping(json.load(response))
    except (OSError, ValueError) as exc:  # urllib's errors are OSErrors
        return [("warn", f"port {SIDECAR_PORT} answers no Dapr metadata ({exc})",
                 f"is it a sidecar? it is {stack.port_holder(SIDECAR_PORT)}")]
    if metadata.get("id") != SERVICE_APP_ID:
        return [("info", f"the sidecar on :{SIDECAR_PORT} is app `{metadata.get('id')}`, not ours; skipped", "")]
    loaded = {c.get("name"): c.get("type") for c in map(_mapping, metadata.get("components") or [])}
    missing = [name for name in EXPECTED_COMPONENTS if name not in loaded]
    if missing:
        return [("FAIL", f"the service's sidecar has not loaded {', '.join(missing)}",
                 "its log says why: .stack/logs/service.log; fix it, then restart `make serve`")]
    return [("ok", f"the service's sidecar loaded all {len(EXPECTED_COMPONENTS)} components "
                   f"(llm-provider is {loaded['llm-provider']})", "")]


def check_project_resources() -> list[Result]:
    return check_resources(stack.RESOURCES_DIR)


ALL_CHECKS = [check_python, check_go, check_java, check_redis, check_dapr, check_ports,
              check_project_resources, check_llm, check_sidecar]
QUICK_CHECKS = [check_python, check_redis, check_ports, check_project_resources]  # no Go, Java, Dapr or HTTP


def format_line(status: str, message: str, fix: str) -> str:
    return f"{status:<6}{message}" + (f" -> {fix}" if fix and status != "ok" else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the cheap checks: Python, Redis, ports, resources")
    parser.add_argument("--failures-only", action="store_true", help="print only warn and FAIL lines")
    args = parser.parse_args(argv)
    failed = False
    for check in QUICK_CHECKS if args.quick else ALL_CHECKS:
        try:
            results = check()
        except Exception as exc:  # a bug in one check must not hide the others
            results = [("FAIL", f"a check crashed: {exc!r}", "report it; the other checks still ran")]
        for status, message, fix in results:
            if not args.failures_only or status in ("warn", "FAIL"):
                print(format_line(status, message, fix), flush=True)
            failed = failed or status == "FAIL"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
