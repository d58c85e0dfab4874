"""The local Dapr stack, without Docker.

`dapr init` would start Redis, placement, scheduler and Zipkin in Docker
containers. This module starts the same services as plain processes on
loopback, each in its own process group, with its log under `.stack/logs/`
and its data under `.stack/data/`, and checks each one is healthy before
anything depends on it. Everything it starts is recorded in `.stack/pids/`,
so `stop` finds it again even after a crash.

    python -m tools.stack up | down | status | run | serve

`run` and `serve` start the stack, run one of the two scripts through
`dapr run` with the README's flags, and stop everything afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("TDA_STATE_DIR", ROOT / ".stack"))
LOG_DIR, PID_DIR, DATA_DIR = STATE_DIR / "logs", STATE_DIR / "pids", STATE_DIR / "data"
RESOURCES_DIR = ROOT / "resources"
SECURE_DIR = RESOURCES_DIR / "secure"
VENV_BIN = ROOT / ".venv" / "bin"

DAPR_RUNTIME_VERSION = "1.18.2"
DAPR_CLI_VERSION = "1.16.5"
TDA_HOME = Path(os.environ.get("TDA_HOME", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tiny-durable-agent"))

# Fixed ports, all on loopback. Placement and scheduler get health and
# metrics ports of their own: the defaults (8080/9090) collide with each
# other and with the sidecar's metrics port 9090 that the README uses.
REDIS_PORT = 6379
PLACEMENT_PORT, PLACEMENT_HEALTHZ_PORT, PLACEMENT_METRICS_PORT = 50005, 58080, 59090
SCHEDULER_PORT, SCHEDULER_HEALTHZ_PORT, SCHEDULER_METRICS_PORT = 50006, 58081, 59091
SCHEDULER_ETCD_CLIENT_PORT, SCHEDULER_ETCD_PEER_PORT = 52379, 52380
ZIPKIN_PORT = 9411
# Sentry takes 50001 because `dapr run` points an mTLS sidecar at
# localhost:50001 and nowhere else; `dapr run` then gives the sidecar's own
# gRPC API another (random) port.
SENTRY_PORT, SENTRY_HEALTHZ_PORT, SENTRY_METRICS_PORT = 50001, 58082, 59092
SENTRY_CREDENTIALS = DATA_DIR / "sentry"
# Secure mode's Redis password: generated once, kept only in these two
# owner-only files. Redis reads it from its config file; the sidecar reads
# it through the secret store `redis-secretstore`, which reads the JSON file.
REDIS_SECURE_CONF = DATA_DIR / "redis-secure.conf"
REDIS_SECRETS_FILE = DATA_DIR / "redis-secrets.json"
REDIS_SECRET_NAME = "redis-password"
TRUST_DOMAIN = "localhost"
ZIPKIN_VERSION = "3.6.1"

# The two commands of the README, verbatim after `dapr run`.
MINIMAL_APP = ["--app-id", "durable-agent-minimal", "--resources-path", "./resources",
               "--", "python", "durable_agent_minimal.py"]
SERVICE_APP = ["--app-id", "durable-agent-service", "--resources-path", "./resources", "-p", "8001",
               "--log-level", "warn", "--metrics-port=9090", "--dapr-http-port=3500", "--enable-api-logging",
               "--", "python", "durable_agent_service.py"]
SERVICE_PORTS = {"app": 8001, "sidecar HTTP": 3500, "sidecar metrics": 9090}

STARTUP_TIMEOUT_S = float(os.environ.get("TDA_STARTUP_TIMEOUT", "60"))
STOP_TIMEOUT_S = 15.0
# How long a stopping service may take to finish its work before it is killed.
DRAIN_TIMEOUT_S = float(os.environ.get("TDA_DRAIN_TIMEOUT", "30"))


class StackError(RuntimeError):
    """A problem the user can fix; the message says how."""


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


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
        if process is not None and not _alive(process):
            raise StackError(f"{what}: the process exited early.{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not ready after {timeout_s:.0f} s.{_log_tail(log)}")
        time.sleep(0.1)


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def _redis_reply_to_ping(port: int = REDIS_PORT) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64)
    except OSError:
        return b""


def redis_ping(port: int = REDIS_PORT) -> bool:
    """A Redis answers on `port`, with or without a password."""
    return _redis_reply_to_ping(port).startswith((b"+PONG", b"-NOAUTH"))


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


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


def require_free(ports: dict[str, int]) -> None:
    taken = [f"  port {port} ({what}) is taken by {port_holder(port)}" for what, port in ports.items() if port_in_use(port)]
    if taken:
        raise StackError("cannot start: a port the stack needs is in use.\n" + "\n".join(taken)
                         + "\n  Stop that process (a stack left behind by a crash: `make stop`), then try again.")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n  last lines of {log}:\n" + "\n".join(f"    {line}" for line in tail)


# --------------------------------------------------------------------------
# Processes we start: own process group, log file, pid file
# --------------------------------------------------------------------------
def spawn(name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
          log: Path | None = None, append: bool = False) -> psutil.Process:
    """Start `argv` in a new process group, output to its log, recorded under `name`."""
    for directory in (LOG_DIR, PID_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    log = log or LOG_DIR / f"{name}.log"
    with open(log, "ab" if append else "wb") as out:
        popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    _record(name, popen.pid)
    return psutil.Process(popen.pid)


def recorded(name: str) -> psutil.Process | None:
    """The live process recorded under `name`, if any.

    The pid file also holds the creation time, which guards against
    signalling an unrelated process that reused the pid after ours ended.
    """
    try:
        pid_text, created = (PID_DIR / f"{name}.pid").read_text().split()
        process = psutil.Process(int(pid_text))
        if abs(process.create_time() - float(created)) < 0.01 and _alive(process):
            return process
    except (FileNotFoundError, ValueError, psutil.Error):
        pass
    return None


def stop(name: str, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the process group recorded under `name`: SIGTERM, then SIGKILL."""
    process = recorded(name)
    (PID_DIR / f"{name}.pid").unlink(missing_ok=True)
    if process is None:
        return False
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
    _, alive = psutil.wait_procs(members, timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(alive, timeout=5)


def stop_dapr_run(name: str, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
    """Stop a `dapr run` recorded under `name` gracefully, app first.

    On a signal, `dapr run` SIGKILLs daprd and then the app, so the app can
    neither finish its requests nor deregister itself. Instead we interrupt
    the app while its sidecar still serves it; when the app is gone, the CLI
    stops daprd and exits by itself. Whatever is left then gets stop().

    SIGINT, not SIGTERM: uvicorn drains on either, then re-raises the signal;
    only SIGINT becomes a KeyboardInterrupt, which lets the script's
    `finally: runner.shutdown(agent)` run (SIGTERM would end the process there).
    """
    cli = recorded(name)
    if cli is None:
        return stop(name)
    with contextlib.suppress(psutil.Error):
        children = cli.children()
        apps = [child for child in children if child.name() != "daprd"]
        for app in apps:
            app.send_signal(signal.SIGINT)
        psutil.wait_procs(apps, timeout=timeout_s)
        cli.wait(timeout=10)
        # The CLI does not wait for the daprd it kills; its ports are free only once it is gone.
        psutil.wait_procs(children, timeout=10)
    stop(name)
    return True


# --------------------------------------------------------------------------
# The Dapr runtime and CLI
# --------------------------------------------------------------------------
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


def _version_of(binary: Path) -> str:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else ""


def find_runtime() -> DaprRuntime:
    """A `dapr init --slim` install of the same minor version, else our own build."""
    minor = DAPR_RUNTIME_VERSION.rsplit(".", 1)[0]
    home_bin = Path.home() / ".dapr" / "bin"
    home_cli = shutil.which("dapr")
    if (home_cli and all((home_bin / b).exists() for b in ("daprd", "placement", "scheduler"))
            and _version_of(home_bin / "daprd").startswith(minor + ".")):
        return DaprRuntime(Path(home_cli), None, home_bin, f"your `dapr init` install in {home_bin.parent}")
    prefix = TDA_HOME / f"dapr-{DAPR_RUNTIME_VERSION}"
    if (prefix / ".complete").exists():
        return DaprRuntime(prefix / "bin" / "dapr", prefix, prefix / ".dapr" / "bin",
                           f"Dapr {DAPR_RUNTIME_VERSION} built from source in {prefix}")
    raise StackError(f"the Dapr runtime {DAPR_RUNTIME_VERSION} is not installed. Run `make setup` "
                     "(it builds it from the Go module proxy; a few minutes, once per machine).")


# --------------------------------------------------------------------------
# Which LLM the agent talks to
# --------------------------------------------------------------------------
@dataclass
class LLMChoice:
    name: str
    resources: Path  # the directory passed as --resources-path
    banner: str
    env: dict[str, str] = field(default_factory=dict)


def describe_llm(env: dict[str, str]) -> LLMChoice:
    """OpenAI with a key; an OpenAI-compatible endpoint with a base URL; Dapr's echo otherwise.

    Only decides; choose_llm() also lays out the resources folder it names.
    """
    if env.get("OPENAI_BASE_URL"):
        extra = {"OPENAI_MODEL": env.get("OPENAI_MODEL") or "gpt-4o-mini",
                 # conversation.openai refuses an empty key, even for a keyless local server.
                 "OPENAI_API_KEY": env.get("OPENAI_API_KEY") or "unused"}
        return LLMChoice("openai-compatible", STATE_DIR / "resources-openai-compatible",
                         f"LLM: OpenAI-compatible endpoint {env['OPENAI_BASE_URL']} "
                         f"(model {extra['OPENAI_MODEL']})", extra)
    if env.get("OPENAI_API_KEY"):
        return LLMChoice("openai", RESOURCES_DIR, "LLM: OpenAI (key from OPENAI_API_KEY, via the secret store)")
    return LLMChoice("echo", STATE_DIR / "resources-echo",
                     "LLM: none configured, so Dapr's conversation.echo answers: the agent ECHOES your "
                     "prompt back. Set OPENAI_API_KEY (or OPENAI_BASE_URL) for a real model.")


def choose_llm(env: dict[str, str]) -> LLMChoice:
    """describe_llm(), with its resources folder ready to pass to `dapr run`.

    `resources/` holds the OpenAI provider, so the README's plain
    `dapr run --resources-path ./resources` works with a key. For the two
    other choices the same components are copied beside the matching
    provider from `resources/llm/` (Dapr allows one conversation component
    to be the default, so the others must not be loaded at all).
    """
    choice = describe_llm(env)
    if choice.resources != RESOURCES_DIR:
        _resources_with(choice.name, choice.resources)
    return choice


def _resources_with(provider: str, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for source in RESOURCES_DIR.glob("*.yaml"):
        if source.name != "llm-provider.yaml":
            shutil.copy(source, target / source.name)
    shutil.copy(RESOURCES_DIR / "llm" / f"{provider}.yaml", target / "llm-provider.yaml")


def dapr_run_argv(runtime: DaprRuntime, app: list[str], resources: Path) -> list[str]:
    """`dapr run` with the README's flags, pointed at the chosen resources."""
    argv = [str(runtime.cli), "run", *app]
    argv[argv.index("./resources")] = str(resources)
    return argv


# --------------------------------------------------------------------------
# The services
# --------------------------------------------------------------------------
@dataclass
class Service:
    name: str
    argv: list[str]
    ports: dict[str, int]
    ready: Callable[[], bool]


def services(runtime: DaprRuntime, secure: bool = False) -> list[Service]:
    """The stack's services. With `secure`, placement and scheduler speak TLS
    with sentry's certificates and Redis requires a password."""
    redis_server = shutil.which("redis-server") or "redis-server"
    bin_dir = runtime.bin_dir
    return [
        Service("redis", [
            # A config file first: it holds the password, which a command line would show to `ps`.
            redis_server, *([str(REDIS_SECURE_CONF)] if secure else []), "--bind", "127.0.0.1", "--port", str(REDIS_PORT),
            "--dir", str(DATA_DIR / "redis"), "--daemonize", "no",
            # Every write reaches the append-only file before Redis acknowledges
            # it, so a killed Redis loses nothing; fsync on every write, so a
            # crash of the whole machine loses nothing acknowledged either.
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            # The Configuration API's subscriptions listen for keyspace events.
            "--notify-keyspace-events", "KA",
        ], {"redis": REDIS_PORT}, redis_ping),
        Service("placement", [
            str(bin_dir / "placement"), "--port", str(PLACEMENT_PORT), "--listen-address", "127.0.0.1",
            "--healthz-port", str(PLACEMENT_HEALTHZ_PORT), "--healthz-listen-address", "127.0.0.1",
            "--metrics-port", str(PLACEMENT_METRICS_PORT), "--metrics-listen-address", "127.0.0.1",
            *(_control_plane_tls() if secure else []),
        ], {"placement": PLACEMENT_PORT, "placement health": PLACEMENT_HEALTHZ_PORT,
            "placement metrics": PLACEMENT_METRICS_PORT},
            lambda: http_ok(f"http://127.0.0.1:{PLACEMENT_HEALTHZ_PORT}/healthz")),
        Service("scheduler", [
            str(bin_dir / "scheduler"), "--port", str(SCHEDULER_PORT), "--listen-address", "127.0.0.1",
            "--healthz-port", str(SCHEDULER_HEALTHZ_PORT), "--healthz-listen-address", "127.0.0.1",
            "--metrics-port", str(SCHEDULER_METRICS_PORT), "--metrics-listen-address", "127.0.0.1",
            "--etcd-data-dir", str(DATA_DIR / "scheduler"),
            "--etcd-client-listen-address", "127.0.0.1",
            "--etcd-client-port", str(SCHEDULER_ETCD_CLIENT_PORT),
            "--etcd-initial-cluster", f"dapr-scheduler-server-0=http://127.0.0.1:{SCHEDULER_ETCD_PEER_PORT}",
            *([*_control_plane_tls(), "--id", "dapr-scheduler-server-0",
               # It must not exist yet: the scheduler creates it with its certificate.
               "--identity-directory-write", str(DATA_DIR / f"scheduler-identity-{os.getpid()}")]
              if secure else []),
        ], {"scheduler": SCHEDULER_PORT, "scheduler health": SCHEDULER_HEALTHZ_PORT,
            "scheduler metrics": SCHEDULER_METRICS_PORT, "scheduler etcd": SCHEDULER_ETCD_CLIENT_PORT,
            "scheduler etcd peer": SCHEDULER_ETCD_PEER_PORT},
            lambda: http_ok(f"http://127.0.0.1:{SCHEDULER_HEALTHZ_PORT}/healthz")),
    ]


def sentry_service(runtime: DaprRuntime) -> Service:
    """Sentry, the certificate authority for mTLS; it creates its CA in SENTRY_CREDENTIALS on first start."""
    return Service("sentry", [
        str(runtime.bin_dir / "sentry"), "--mode", "standalone", "--config", str(SECURE_DIR / "sentry-config.yaml"),
        "--issuer-credentials", str(SENTRY_CREDENTIALS), "--trust-domain", TRUST_DOMAIN,
        "--port", str(SENTRY_PORT), "--listen-address", "127.0.0.1",
        "--healthz-port", str(SENTRY_HEALTHZ_PORT), "--metrics-port", str(SENTRY_METRICS_PORT),
    ], {"sentry": SENTRY_PORT, "sentry health": SENTRY_HEALTHZ_PORT, "sentry metrics": SENTRY_METRICS_PORT},
        lambda: http_ok(f"http://127.0.0.1:{SENTRY_HEALTHZ_PORT}/healthz")
        and (SENTRY_CREDENTIALS / "ca.crt").exists())


def _create_sentry_credentials(runtime: DaprRuntime) -> None:
    """Let sentry create its CA once, then stop it. Writing the files makes a
    running sentry reload itself, and certificates asked for during that
    reload fail; a sentry that finds them at start does not reload."""
    service = sentry_service(runtime)
    require_free(service.ports)
    SENTRY_CREDENTIALS.mkdir(parents=True, exist_ok=True)
    process = spawn("sentry", service.argv, log=LOG_DIR / "sentry-first-start.log")
    try:
        wait_until(service.ready, "sentry creating its certificates", process=process,
                   log=LOG_DIR / "sentry-first-start.log")
    finally:
        stop("sentry")
    say(f"sentry: created a root certificate in {_rel(SENTRY_CREDENTIALS)}")


def _control_plane_tls() -> list[str]:
    return ["--tls-enabled", "--trust-domain", TRUST_DOMAIN, "--trust-anchors-file", str(SENTRY_CREDENTIALS / "ca.crt"),
            "--sentry-address", f"127.0.0.1:{SENTRY_PORT}"]


def mtls_env() -> dict[str, str]:
    """What an mTLS sidecar needs in its environment: sentry's root certificate, and its address on loopback."""
    return {"DAPR_TRUST_ANCHORS": (SENTRY_CREDENTIALS / "ca.crt").read_text(), "NAMESPACE": "default",
            # mDNS would announce the machine's address; invocations stay on loopback.
            "DAPR_HOST_IP": "127.0.0.1"}


def _ensure_redis_password() -> None:
    """Create secure mode's Redis password once, readable by its owner only."""
    if REDIS_SECURE_CONF.exists() and REDIS_SECRETS_FILE.exists():
        return
    password = secrets.token_urlsafe(24)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in ((REDIS_SECURE_CONF, f"requirepass {password}\n"),
                       (REDIS_SECRETS_FILE, json.dumps({REDIS_SECRET_NAME: password}) + "\n")):
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(text)
    say(f"redis: created a password for secure mode in {_rel(REDIS_SECRETS_FILE)} (owner-only)")


def redis_password() -> str:
    """Secure mode's Redis password (for tools and tests that talk to Redis directly)."""
    return json.loads(REDIS_SECRETS_FILE.read_text())[REDIS_SECRET_NAME]


def secure_resources(source: Path, target: Path) -> Path:
    """A copy of the resources folder `source` in which every Redis component
    reads its password from `redis-secretstore` (resources/secure/).

    The shipped components say `redisPassword: ""`, true for the plain
    stack's Redis. Here the value becomes a secretKeyRef that the sidecar
    resolves when it loads the component, so the password is in no YAML file.
    """
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("llm", "secure"))
    for path in sorted(target.glob("*.yaml")):
        component = yaml.safe_load(path.read_text())
        password = [item for item in component["spec"].get("metadata") or [] if item["name"] == "redisPassword"]
        if not password:
            continue
        password[0].pop("value", None)
        password[0]["secretKeyRef"] = {"name": REDIS_SECRET_NAME, "key": REDIS_SECRET_NAME}
        component["auth"] = {"secretStore": "redis-secretstore"}
        path.write_text(f"# Written by tools/stack.py for secure mode from {path.name} of {_rel(source)}:\n"
                        "# the Redis password comes from the secret store redis-secretstore.\n"
                        + yaml.safe_dump(component, sort_keys=False))
    store = yaml.safe_load((SECURE_DIR / "redis-secretstore.yaml").read_text())
    store["spec"]["metadata"] = [{"name": "secretsFile", "value": str(REDIS_SECRETS_FILE)}]
    (target / "redis-secretstore.yaml").write_text(
        "# Written by tools/stack.py from resources/secure/redis-secretstore.yaml.\n"
        + yaml.safe_dump(store, sort_keys=False))
    return target


def _runs_in_secure_mode(name: str, process: psutil.Process) -> bool | None:
    """Whether a running service of ours was started in secure mode; None if it has no modes."""
    if name == "redis":  # Redis rewrites its command line, so ask it
        return _redis_reply_to_ping().startswith(b"-NOAUTH")
    if name in ("placement", "scheduler"):
        with contextlib.suppress(psutil.Error):
            return "--tls-enabled" in process.cmdline()
    return None


def _check_mode(name: str, process: psutil.Process, secure: bool) -> None:
    """Refuse to mix modes: a plain sidecar cannot use a TLS placement, nor a secure one a Redis without password."""
    running_secure = _runs_in_secure_mode(name, process)
    if running_secure is not None and running_secure != secure:
        running, wanted = ("secure", "plain") if not secure else ("plain", "secure")
        raise StackError(f"{name} of this stack is running in {running} mode, but {wanted} mode was asked "
                         f"for (TDA_SECURE={'1' if secure else 'unset'}). Stop the stack first: `make stop`.")


def zipkin_service() -> Service | None:
    """Zipkin, where the sidecar's default configuration sends traces; None without Java."""
    jar = TDA_HOME / "zipkin" / f"zipkin-server-{ZIPKIN_VERSION}-exec.jar"
    java = shutil.which("java")
    if java is None or not jar.exists():
        return None
    return Service("zipkin", [
        java, "-Xmx256m", "-jar", str(jar),
        "--armeria.ports[0].ip=127.0.0.1", f"--armeria.ports[0].port={ZIPKIN_PORT}",
    ], {"zipkin": ZIPKIN_PORT}, lambda: http_ok(f"http://127.0.0.1:{ZIPKIN_PORT}/health"))


def up(tracing: bool = True, secure: bool = False) -> tuple[DaprRuntime, list[str]]:
    """Start every service that is not already running; wait until each is healthy.

    Services start side by side and are then awaited one by one, so the
    slowest (Zipkin's JVM, about 10 s) sets the start-up time. Returns the
    runtime and the names of the services this call started, so the caller
    stops exactly those and leaves a stack it found running alone.
    """
    runtime = find_runtime()
    say(f"runtime: {runtime.origin}")
    wanted = services(runtime, secure)
    for service in wanted:
        running = recorded(service.name)
        if running is not None:
            _check_mode(service.name, running, secure)
    if secure and recorded("redis") is None and redis_ping():
        raise StackError(f"secure mode needs its own Redis with a password, but another Redis listens on "
                         f"127.0.0.1:{REDIS_PORT}: {port_holder(REDIS_PORT)}. Stop it, or leave TDA_SECURE unset.")
    if secure:
        _ensure_redis_password()
        # Sentry first: placement and scheduler need its root certificate to start.
        wanted.insert(0, sentry_service(runtime))
        if not (SENTRY_CREDENTIALS / "ca.crt").exists() and recorded("sentry") is None:
            _create_sentry_credentials(runtime)
    if tracing:
        zipkin = zipkin_service()
        if zipkin is None:
            say("zipkin: tracing is OFF: Java 17+ or the Zipkin jar is missing (`make setup` fetches the jar "
                "when Java and Maven are installed); everything else runs")
        else:
            wanted.append(zipkin)
    started: list[tuple[Service, psutil.Process, float]] = []
    try:
        for service in wanted:
            if recorded(service.name) is not None and service.ready():
                say(f"{service.name}: already running (started by this stack)")
                continue
            if service.name == "redis" and redis_ping():
                say(f"redis: reusing the Redis already on 127.0.0.1:{REDIS_PORT}, {port_holder(REDIS_PORT)}")
                continue
            if service.name == "redis" and not shutil.which("redis-server"):
                raise StackError("redis-server is not installed. Run `make setup` "
                                 "(or install it: `apt-get install redis-server`, `brew install redis`).")
            require_free(service.ports)
            (DATA_DIR / service.name).mkdir(parents=True, exist_ok=True)
            started.append((service, spawn(service.name, service.argv), time.monotonic()))
            if service.name == "sentry":
                wait_until(service.ready, "sentry", process=started[-1][1], log=LOG_DIR / "sentry.log")
        for service, process, t0 in started:
            port = next(iter(service.ports.values()))
            log = LOG_DIR / f"{service.name}.log"
            wait_until(service.ready, f"{service.name} on 127.0.0.1:{port}", process=process, log=log)
            say(f"{service.name}: ready on 127.0.0.1:{port} in {time.monotonic() - t0:.1f} s (log: {_rel(log)})")
    except BaseException:
        for service, _, _ in reversed(started):
            stop(service.name)
        raise
    return runtime, [service.name for service, _, _ in started]


def down() -> None:
    """Stop everything this stack recorded, apps first, then services."""
    names = sorted(p.stem for p in PID_DIR.glob("*.pid")) if PID_DIR.exists() else []
    order = {"redis": 5, "sentry": 4, "zipkin": 3, "scheduler": 2, "placement": 1}  # apps (0) stop before what they use
    for name in sorted(names, key=lambda n: order.get(n, 0)):
        if (stop(name) if name in order else stop_dapr_run(name)):
            say(f"{name}: stopped")


def status() -> int:
    names = sorted(p.stem for p in PID_DIR.glob("*.pid")) if PID_DIR.exists() else []
    if not names:
        say("nothing of this stack is running")
    for name in names:
        process = recorded(name)
        state = f"running, pid {process.pid}" if process else "not running (stale record)"
        say(f"{name:<24} {state:<24} log: {_rel(LOG_DIR / f'{name}.log')}")
    return 0


def _rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)


# --------------------------------------------------------------------------
# run / serve: one of the README's `dapr run` commands, with the stack around it
# --------------------------------------------------------------------------
def secure_mode_requested() -> bool:
    """TDA_SECURE=1: mTLS through sentry, access control, and a Redis password from a secret store."""
    return os.environ.get("TDA_SECURE") == "1"


def service_ready(api_token: str | None = None) -> bool:
    """The service answers, its sidecar is healthy and its topic subscription is live.

    `api_token`: the sidecar's DAPR_API_TOKEN, if it has one (its metadata needs it).
    """
    if not (http_ok("http://127.0.0.1:3500/v1.0/healthz") and http_ok("http://127.0.0.1:8001/openapi.json")):
        return False
    request = urllib.request.Request("http://127.0.0.1:3500/v1.0/metadata",
                                     headers={"dapr-api-token": api_token} if api_token else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            metadata = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(sub.get("topic") == "assistant.topic" for sub in metadata.get("subscriptions") or [])


def start_service(argv: list[str], env: dict[str, str], log: Path, append: bool = False) -> psutil.Process:
    """Start the service's `dapr run` in the background, recorded as "service",
    and return once it is ready (see service_ready). For tests and tools;
    `make serve` runs it in the foreground instead (run_app)."""
    require_free(SERVICE_PORTS)
    process = spawn("service", argv, env=env, log=log, append=append)
    wait_until(lambda: service_ready(env.get("DAPR_API_TOKEN")), "durable_agent_service.py under dapr run",
               process=process, log=log)
    return process


def run_app(app: list[str], name: str) -> int:
    """Start the stack, run `dapr run <app>` until it exits or we are signalled, stop what we started.

    A one-shot run skips Zipkin: it would add ~10 s and its in-memory traces
    would vanish when the run stops it again. `serve` and `up` include it.
    """
    secure = secure_mode_requested()
    runtime, started = up(tracing=name != "minimal", secure=secure)
    try:
        llm = choose_llm(dict(os.environ))
        say(llm.banner)
        if name == "service":
            require_free(SERVICE_PORTS)
        resources = llm.resources
        if secure:
            resources = secure_resources(llm.resources, STATE_DIR / "resources-secure")
            say(f"secure mode: mTLS through sentry, access control from resources/secure/service-config.yaml, "
                f"Redis password from the secret store (components in {_rel(resources)})")
        # Paths relative to the repository, as the README writes them and as we print them.
        argv, env = dapr_run_argv(runtime, app, Path(_rel(resources))), runtime.env() | llm.env
        if secure:
            argv[2:2] = ["--config", _rel(SECURE_DIR / "service-config.yaml")]
            env |= mtls_env()
        say("$ dapr run " + " ".join(argv[2:]))
        # Own process group, so Ctrl+C reaches us first and we stop the
        # sidecar and the app in order instead of racing them.
        popen = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
        _record(name, popen.pid)
        with _graceful_stop_on_signal(popen) as stopping:
            if name == "service":
                with contextlib.suppress(StackError):
                    wait_until(lambda: service_ready(env.get("DAPR_API_TOKEN")) or popen.poll() is not None
                               or stopping.is_set(),
                               "the service")
                if popen.poll() is None and not stopping.is_set():
                    say("ready. In another terminal: curl -i -X POST http://localhost:8001/run "
                        "-H 'Content-Type: application/json' -d '{\"task\": \"Write a haiku about programming.\"}'")
                    say("Ctrl+C stops the service and the whole stack.")
            while popen.poll() is None:
                if stopping.is_set() and time.monotonic() > stopping.deadline:
                    say(f"the app did not finish within {DRAIN_TIMEOUT_S:.0f} s; stopping it now "
                        "(its runs resume at the next start)")
                    break
                time.sleep(0.2)
            return popen.returncode if popen.returncode is not None else 0
    finally:
        stop_dapr_run(name)
        for service in reversed(started):
            if stop(service):
                say(f"{service}: stopped")


def _record(name: str, pid: int) -> None:
    PID_DIR.mkdir(parents=True, exist_ok=True)
    (PID_DIR / f"{name}.pid").write_text(f"{pid} {psutil.Process(pid).create_time()}\n")


class _StopRequest(threading.Event):
    deadline = float("inf")


@contextlib.contextmanager
def _graceful_stop_on_signal(popen: subprocess.Popen) -> Iterator[_StopRequest]:
    """On Ctrl+C or SIGTERM, interrupt the app first (see stop_dapr_run) and
    give it DRAIN_TIMEOUT_S to finish; a second signal stops it at once."""
    stopping = _StopRequest()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            stopping.deadline = 0.0
            return
        say(f"stopping: the app finishes its requests and deregisters (up to {DRAIN_TIMEOUT_S:.0f} s; "
            "Ctrl+C again to stop at once), then its sidecar and the stack stop")
        stopping.deadline = time.monotonic() + DRAIN_TIMEOUT_S
        stopping.set()
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(popen.pid).children():
                if child.name() != "daprd":
                    child.send_signal(signal.SIGINT)  # see stop_dapr_run

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "run", "serve", "env"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(secure=secure_mode_requested())
            say("stack is up; `make stop` stops it")
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        elif args.command == "env":
            # For your own shell: eval "$(python -m tools.stack env)"
            runtime = find_runtime()
            env = runtime.env()
            print(f'export PATH="{env["PATH"]}"')
            if "DAPR_RUNTIME_PATH" in env:
                print(f'export DAPR_RUNTIME_PATH="{env["DAPR_RUNTIME_PATH"]}"')
        elif args.command == "run":
            return run_app(MINIMAL_APP, "minimal")
        elif args.command == "serve":
            return run_app(SERVICE_APP, "service")
    except StackError as exc:
        print(f"[stack] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
