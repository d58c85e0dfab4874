"""The stack's services, which `dapr init` would run in Docker: Redis,
placement, scheduler, Zipkin (and sentry in secure mode), started here as
plain processes on 127.0.0.1 and checked healthy before anything uses them.

    up()      start what is not running yet; returns the names it started
    down()    stop everything recorded, apps first
    status()  what runs, and where its log is
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from tools.stack import secure as secure_mode
from tools.stack.processes import (
    Service,
    StackError,
    http_ok,
    orphaned,
    port_holder,
    recorded,
    recorded_names,
    rel,
    require_free,
    say,
    spawn,
    stop,
    stop_dapr_run,
    wait_until,
)
from tools.stack.runtime import DaprRuntime, find_runtime
from tools.stack.settings import (
    DATA_DIR,
    LOCAL_MODEL_NAME,
    LOCAL_MODEL_PARALLEL,
    LOCAL_MODEL_PORT,
    LOCAL_MODEL_STORE,
    LOG_DIR,
    NAME_RESOLUTION_DB,
    OLLAMA_BIN,
    PLACEMENT_HEALTHZ_PORT,
    PLACEMENT_METRICS_PORT,
    PLACEMENT_PORT,
    REDIS_PORT,
    SCHEDULER_ETCD_CLIENT_PORT,
    SCHEDULER_ETCD_PEER_PORT,
    SCHEDULER_HEALTHZ_PORT,
    SCHEDULER_METRICS_PORT,
    SCHEDULER_PORT,
    ZIPKIN_JAR,
    ZIPKIN_PORT,
)


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


def redis_requires_password() -> bool:
    return _redis_reply_to_ping().startswith(b"-NOAUTH")


def control_plane(bin_dir: Path, secure: bool = False) -> list[Service]:
    """Redis, placement and scheduler. With `secure`, placement and scheduler
    speak TLS with sentry's certificates and Redis requires a password."""
    tls = secure_mode.control_plane_tls() if secure else []
    return [
        Service("redis", [
            # A config file first: it holds the password, which a command line would show to `ps`.
            shutil.which("redis-server") or "redis-server",
            *([str(secure_mode.REDIS_SECURE_CONF)] if secure else []),
            "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--dir", str(DATA_DIR / "redis"), "--daemonize", "no",
            # Every write reaches the append-only file before Redis acknowledges
            # it, so a killed Redis loses nothing; fsync on every write, so a
            # crash of the whole machine loses nothing acknowledged either.
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            # The Configuration API's subscriptions listen for keyspace events.
            "--notify-keyspace-events", "KA",
        ], {"redis": REDIS_PORT}, redis_ping),
        # --healthz-listen-address is not passed on by 1.18.2 (scripts/install-dapr.sh patches the health
        # server to loopback); placement's and scheduler's metrics follow --listen-address.
        Service("placement", [
            str(bin_dir / "placement"), "--port", str(PLACEMENT_PORT), "--listen-address", "127.0.0.1",
            "--healthz-port", str(PLACEMENT_HEALTHZ_PORT), "--healthz-listen-address", "127.0.0.1",
            "--metrics-port", str(PLACEMENT_METRICS_PORT), "--metrics-listen-address", "127.0.0.1", *tls,
        ], {"placement": PLACEMENT_PORT, "placement health": PLACEMENT_HEALTHZ_PORT,
            "placement metrics": PLACEMENT_METRICS_PORT},
            lambda: http_ok(f"http://127.0.0.1:{PLACEMENT_HEALTHZ_PORT}/healthz")),
        Service("scheduler", [
            str(bin_dir / "scheduler"), "--port", str(SCHEDULER_PORT), "--listen-address", "127.0.0.1",
            "--healthz-port", str(SCHEDULER_HEALTHZ_PORT), "--healthz-listen-address", "127.0.0.1",
            "--metrics-port", str(SCHEDULER_METRICS_PORT), "--metrics-listen-address", "127.0.0.1",
            "--etcd-data-dir", str(DATA_DIR / "scheduler"),
            "--etcd-client-listen-address", "127.0.0.1", "--etcd-client-port", str(SCHEDULER_ETCD_CLIENT_PORT),
            "--etcd-initial-cluster", f"dapr-scheduler-server-0=http://127.0.0.1:{SCHEDULER_ETCD_PEER_PORT}",
            *([*tls, "--id", "dapr-scheduler-server-0",
               # It must not exist yet: the scheduler creates it with its certificate.
               "--identity-directory-write", str(DATA_DIR / f"scheduler-identity-{time.time_ns()}")]
              if secure else []),
        ], {"scheduler": SCHEDULER_PORT, "scheduler health": SCHEDULER_HEALTHZ_PORT,
            "scheduler metrics": SCHEDULER_METRICS_PORT, "scheduler etcd": SCHEDULER_ETCD_CLIENT_PORT,
            "scheduler etcd peer": SCHEDULER_ETCD_PEER_PORT},
            lambda: http_ok(f"http://127.0.0.1:{SCHEDULER_HEALTHZ_PORT}/healthz")),
    ]


def zipkin_service() -> Service | None:
    """Zipkin, where the sidecar's default configuration sends traces; None without Java."""
    java = shutil.which("java")
    if java is None or not ZIPKIN_JAR.exists():
        return None
    return Service("zipkin", [
        # Armeria's own DNS resolver keeps a UDP socket open on every interface; the JDK's does not.
        java, "-Xmx256m", "-Dcom.linecorp.armeria.useJdkDnsResolver=true", "-jar", str(ZIPKIN_JAR),
        "--armeria.ports[0].ip=127.0.0.1", f"--armeria.ports[0].port={ZIPKIN_PORT}",
    ], {"zipkin": ZIPKIN_PORT}, lambda: http_ok(f"http://127.0.0.1:{ZIPKIN_PORT}/health"))


def local_model_loaded(port: int = LOCAL_MODEL_PORT) -> bool:
    """Ollama answers and holds the model in memory, so the first run does not wait for it to load.

    A generate request without a prompt only loads the model (Ollama's documented preload);
    keep_alive -1 keeps it loaded for as long as the server runs.
    """
    if not http_ok(f"http://127.0.0.1:{port}/api/version"):
        return False
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/generate", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": LOCAL_MODEL_NAME, "keep_alive": -1}).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response).get("done") is True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def local_model_service() -> Service:
    """Ollama serving the local model (scripts/install-local-model.sh built both), on 127.0.0.1 only.

    `env` sets its variables on the command line, so the pid recorded stays Ollama's own.
    Ollama runs the model in a child process of its own group: stopping the group stops both.
    """
    return Service("local-model", [
        "env", f"OLLAMA_HOST=127.0.0.1:{LOCAL_MODEL_PORT}", f"OLLAMA_MODELS={LOCAL_MODEL_STORE}",
        # Loaded once, kept while the stack runs; no other model is ever loaded beside it.
        "OLLAMA_KEEP_ALIVE=-1", "OLLAMA_MAX_LOADED_MODELS=1", f"OLLAMA_NUM_PARALLEL={LOCAL_MODEL_PARALLEL}",
        # Nothing to fetch: the model is in the store and the machine may be offline.
        "OLLAMA_NOPRUNE=1", "OLLAMA_NO_CLOUD=1",
        # Its HTTP framework's release mode: one log line per request, not the route table at start.
        "GIN_MODE=release",
        str(OLLAMA_BIN), "serve",
    ], {"local model": LOCAL_MODEL_PORT}, local_model_loaded)


def _wanted(runtime: DaprRuntime, tracing: bool, secure: bool, local_model: bool = False) -> list[Service]:
    wanted = control_plane(runtime.bin_dir, secure)
    for service in wanted:
        running = recorded(service.name)
        if running is not None:
            running_secure = secure_mode.runs_in_secure_mode(service.name, running, redis_requires_password())
            secure_mode.check_mode(service.name, running_secure, secure)
    if secure and recorded("redis") is None and redis_ping():
        raise StackError(f"secure mode needs its own Redis with a password, but another Redis listens on "
                         f"127.0.0.1:{REDIS_PORT}: {port_holder(REDIS_PORT)}. Stop it, or leave TDA_SECURE unset.")
    if secure:
        secure_mode.ensure_redis_password()
        # Sentry first: placement and scheduler need its root certificate to start.
        wanted.insert(0, secure_mode.sentry_service(runtime.bin_dir))
        if not (secure_mode.SENTRY_CREDENTIALS / "ca.crt").exists() and recorded("sentry") is None:
            secure_mode.create_sentry_credentials(runtime.bin_dir)
    if tracing:
        zipkin = zipkin_service()
        if zipkin is None:
            say("zipkin: tracing is OFF: Java 17+ or the Zipkin jar is missing (`make setup` fetches the jar "
                "when Java and Maven are installed); everything else runs")
        else:
            wanted.append(zipkin)
    if local_model:
        wanted.append(local_model_service())
    return wanted


def up(tracing: bool = True, secure: bool = False, tied: bool = True,
       local_model: bool = False) -> tuple[DaprRuntime, list[str]]:
    """Start every service that is not already running; wait until each is healthy.

    Services start side by side and are then awaited one by one, so the
    slowest (Zipkin's JVM, about 10 s) sets the start-up time. Returns the
    runtime and the names of the services this call started, so the caller
    stops exactly those and leaves a stack it found running alone. `tied`
    services end with this process (see processes.spawn); `make up` starts
    untied ones, which run until `make stop`. `local_model`: also the model
    server of `LLM=local`, ready once the model is loaded.
    """
    runtime = find_runtime()
    say(f"runtime: {runtime.origin}")
    stop_leftovers()
    NAME_RESOLUTION_DB.parent.mkdir(parents=True, exist_ok=True)  # sqlite creates the file, not its folder
    started: list[tuple[Service, psutil.Process, float]] = []
    try:
        for service in _wanted(runtime, tracing, secure, local_model):
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
            started.append((service, spawn(service.name, service.argv, tied=tied), time.monotonic()))
            if service.name == "sentry":
                wait_until(service.ready, "sentry", process=started[-1][1], log=LOG_DIR / "sentry.log")
        for service, process, t0 in started:
            port = next(iter(service.ports.values()))
            log = LOG_DIR / f"{service.name}.log"
            wait_until(service.ready, f"{service.name} on 127.0.0.1:{port}", process=process, log=log)
            say(f"{service.name}: ready on 127.0.0.1:{port} in {time.monotonic() - t0:.1f} s (log: {rel(log)})")
    except BaseException:
        stop_services([service.name for service, _, _ in started])
        raise
    return runtime, [service.name for service, _, _ in started]


def stop_leftovers() -> None:
    """Stop what a killed command of this stack left running (its services and its `dapr run`),
    so that the next start finds the ports free instead of a stack that serves no one."""
    leftovers = [name for name in recorded_names() if orphaned(name)]
    if leftovers:
        say(f"stopping what a killed command of this stack left running: {', '.join(leftovers)}")
        stop_services(leftovers)


# Apps (0) stop before the services they use.
STOP_ORDER = {"redis": 5, "sentry": 4, "zipkin": 3, "local-model": 3, "scheduler": 2, "placement": 1}


def stop_services(names: list[str], quiet: bool = True) -> None:
    """Stop the named recorded processes, apps (any `dapr run`) first, Redis last."""
    for name in sorted(names, key=lambda n: STOP_ORDER.get(n, 0)):
        if (stop(name) if name in STOP_ORDER else stop_dapr_run(name)) and not quiet:
            say(f"{name}: stopped")


def down() -> None:
    """Stop everything this stack recorded."""
    stop_services(recorded_names(), quiet=False)


def status() -> int:
    names = recorded_names()
    if not names:
        say("nothing of this stack is running")
    for name in names:
        process = recorded(name)
        state = f"running, pid {process.pid}" if process else "not running (stale record)"
        say(f"{name:<24} {state:<24} log: {rel(LOG_DIR / f'{name}.log')}")
    return 0
