"""`make serve-ha` (`python -m tools.ha serve`): the service on three "hosts" of one machine.

Each host is a loopback address of its own (HA_HOSTS; Linux routes all of 127/8 to lo)
with a placement node (a 3-node Raft cluster), a scheduler node (a 3-member embedded
etcd) and a replica of the service (the README's `dapr run`, same app id, its sidecar
bound to the host's address), each given all placement and all scheduler addresses.
Redis and Zipkin stay single, on 127.0.0.1. Ctrl+C stops all of it, replicas first.
`--app refund-agent` (`make serve-ha APP=refund-agent`) runs examples/approval/refund_agent.py as the
replicas instead (REPLICA_APPS). Tests use `running()` and the Cluster to kill, freeze and restart nodes
(tests/test_ha.py, tests/test_approval_ha.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil

from tools.runs.refund_app import APPROVAL_APP
from tools.stack import commands as stack
from tools.stack import processes, services, settings
from tools.stack import secure as secure_mode
from tools.stack.llm import choose_llm
from tools.stack.processes import Service, StackError, say
from tools.stack.runtime import DaprRuntime, find_runtime
from tools.stack.settings import DATA_DIR, HA_HOSTS, LOG_DIR, LOOPBACK

PLACEMENT_ADDRESSES = ",".join(f"{host}:{settings.PLACEMENT_PORT}" for host in HA_HOSTS)
SCHEDULER_ADDRESSES = ",".join(f"{host}:{settings.SCHEDULER_PORT}" for host in HA_HOSTS)


@dataclass(frozen=True)
class ReplicaApp:
    """What each replica runs: the `dapr run` arguments of the single stack (replica_app gives each replica its
    ports) and the topic whose subscription tells that the app is ready (None: it subscribes to none)."""

    dapr_run: tuple[str, ...]
    topic: str | None


REPLICA_APPS = {
    settings.SERVICE_APP_ID: ReplicaApp(tuple(stack.SERVICE_APP), "assistant.topic"),  # the default
    settings.APPROVAL_APP_ID: ReplicaApp(tuple(APPROVAL_APP), None),  # examples/approval/refund_agent.py
}
SERVICE = REPLICA_APPS[settings.SERVICE_APP_ID]


@dataclass
class Node:
    """One process of the HA stack on one host: `ports` are on `host`, `health_ports` on 127.0.0.1."""

    service: Service
    host: str
    env: dict[str, str] | None = None
    replica: bool = False
    health_ports: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.service.name


def _control_plane_node(name: str, argv: list[str], host: str, health: int, ports: dict[str, int]) -> Node:
    # Our build's health servers listen on 127.0.0.1 whatever the node's address.
    return Node(Service(name, argv, ports, lambda: processes.http_ok(f"http://{LOOPBACK}:{health}/healthz")), host,
                health_ports={"health": health})


def placement_node(i: int, bin_dir, secure: bool) -> Node:
    host, health = HA_HOSTS[i], settings.HA_PLACEMENT_HEALTHZ_PORTS[i]
    peers = ",".join(f"{node_id}={HA_HOSTS[k]}:{settings.PLACEMENT_RAFT_PORT}"
                     for k, node_id in enumerate(settings.HA_PLACEMENT_IDS))
    # No --raft-logstore-path: 1.18.2 parses it but keeps its Raft log in memory whatever it says
    # (pkg/placement/internal/leadership); the actor table is rebuilt from the sidecars' reports anyway.
    argv = [str(bin_dir / "placement"), "--id", settings.HA_PLACEMENT_IDS[i], "--initial-cluster", peers,
            "--port", str(settings.PLACEMENT_PORT), "--listen-address", host,
            "--healthz-port", str(health), "--healthz-listen-address", LOOPBACK,
            "--metrics-port", str(settings.PLACEMENT_METRICS_PORT), "--metrics-listen-address", host,
            *(secure_mode.control_plane_tls() if secure else [])]
    return _control_plane_node(f"ha-placement-{i}", argv, host, health, {
        "placement": settings.PLACEMENT_PORT, "placement raft": settings.PLACEMENT_RAFT_PORT,
        "placement metrics": settings.PLACEMENT_METRICS_PORT})


def scheduler_node(i: int, bin_dir, secure: bool) -> Node:
    host, health = HA_HOSTS[i], settings.HA_SCHEDULER_HEALTHZ_PORTS[i]
    # The scheme is required. http also in secure mode, so the members talk in clear on loopback: with https, etcd
    # checks a caller's address against the Kubernetes DNS names in its certificate, which resolve nowhere here.
    members = ",".join(f"{node_id}=http://{HA_HOSTS[k]}:{settings.SCHEDULER_ETCD_PEER_PORT}"
                       for k, node_id in enumerate(settings.HA_SCHEDULER_IDS))
    argv = [str(bin_dir / "scheduler"), "--id", settings.HA_SCHEDULER_IDS[i], "--etcd-initial-cluster", members,
            "--port", str(settings.SCHEDULER_PORT), "--listen-address", host,
            # What it tells the sidecars to dial; else its host's "real" address (1.18.2 takes only 127.0.0.1 as local).
            "--override-broadcast-host-port", f"{host}:{settings.SCHEDULER_PORT}",
            "--healthz-port", str(health), "--healthz-listen-address", LOOPBACK,
            "--metrics-port", str(settings.SCHEDULER_METRICS_PORT), "--metrics-listen-address", host,
            "--etcd-data-dir", str(DATA_DIR / "ha" / f"scheduler-{i}"),
            "--etcd-client-listen-address", host, "--etcd-client-port", str(settings.SCHEDULER_ETCD_CLIENT_PORT),
            *([*secure_mode.control_plane_tls(),
               # It must not exist yet: the scheduler creates it with its certificate.
               "--identity-directory-write", str(DATA_DIR / "ha" / f"scheduler-{i}-identity-{time.time_ns()}")]
              if secure else [])]
    return _control_plane_node(f"ha-scheduler-{i}", argv, host, health, {
        "scheduler": settings.SCHEDULER_PORT, "etcd": settings.SCHEDULER_ETCD_CLIENT_PORT,
        "etcd peer": settings.SCHEDULER_ETCD_PEER_PORT, "scheduler metrics": settings.SCHEDULER_METRICS_PORT})


def replica_app(i: int, what: ReplicaApp = SERVICE) -> list[str]:
    """The app's command (the README's service command by default) with replica i's ports and every control-plane
    address."""
    app = list(what.dapr_run)
    app[app.index("-p") + 1] = str(settings.HA_APP_PORTS[i])
    app = [f"--metrics-port={settings.HA_SIDECAR_METRICS_PORTS[i]}" if arg.startswith("--metrics-port=")
           else f"--dapr-http-port={settings.HA_SIDECAR_HTTP_PORTS[i]}" if arg.startswith("--dapr-http-port=") else arg
           for arg in app]
    at = app.index("--")
    return [*app[:at], "--placement-host-address", PLACEMENT_ADDRESSES,
            "--scheduler-host-address", SCHEDULER_ADDRESSES, *app[at:]]


def replica_ready(i: int, api_token: str | None = None, topic: str | None = "assistant.topic") -> bool:
    """Replica i answers, its sidecar is healthy, and its topic subscription is live (see stack.service_ready)."""
    sidecar = f"http://{HA_HOSTS[i]}:{settings.HA_SIDECAR_HTTP_PORTS[i]}"
    app = f"http://{LOOPBACK}:{settings.HA_APP_PORTS[i]}"
    if not (processes.http_ok(f"{sidecar}/v1.0/healthz") and processes.http_ok(f"{app}/openapi.json")):
        return False
    if topic is None:
        return True
    request = urllib.request.Request(f"{sidecar}/v1.0/metadata",
                                     headers={"dapr-api-token": api_token} if api_token else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            subscriptions = json.load(response).get("subscriptions") or []
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(sub.get("topic") == topic for sub in subscriptions)


def replica_node(i: int, runtime: DaprRuntime, llm_env: dict[str, str], secure: bool,
                 what: ReplicaApp = SERVICE) -> Node:
    argv, env = stack.dapr_run(runtime, replica_app(i, what), choose_llm(llm_env), secure=secure, base_env=llm_env)
    host = HA_HOSTS[i]
    # The wrapper binds every listener of the sidecar to TDA_SIDECAR_ADDRESS, and its HTTP and gRPC APIs to
    # TDA_SIDECAR_API_ALSO_ON too: 127.0.0.1 plays each host's own loopback, where `dapr run` writes its
    # bookkeeping (without it, the CLI retries for ~30 s and handles no signal meanwhile: a SIGKILLed
    # `make serve-ha` left its replicas serving that long). DAPR_HOST_IP is the address it announces to
    # placement (other sidecars dial it for the actors it hosts), DAPR_RUNTIME_HOST where the app finds its
    # sidecar (Dapr's Python SDK).
    env |= {"TDA_SIDECAR_ADDRESS": host, "TDA_SIDECAR_API_ALSO_ON": LOOPBACK, "DAPR_HOST_IP": host,
            "DAPR_RUNTIME_HOST": host}
    return Node(Service(f"ha-replica-{i}", argv, {"sidecar HTTP": settings.HA_SIDECAR_HTTP_PORTS[i],
                                                 "sidecar metrics": settings.HA_SIDECAR_METRICS_PORTS[i]},
                        lambda: replica_ready(i, env.get("DAPR_API_TOKEN"), what.topic)), host, env, replica=True,
                health_ports={"app": settings.HA_APP_PORTS[i], "sidecar HTTP": settings.HA_SIDECAR_HTTP_PORTS[i]})


def placement_leader() -> int | None:
    """The index of the placement node whose metrics say it leads, if one does (a stopped host does not answer)."""
    for i, host in enumerate(HA_HOSTS):
        with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(
                f"http://{host}:{settings.PLACEMENT_METRICS_PORT}/metrics", timeout=1) as response:
            if b"\ndapr_placement_leader_status 1" in response.read():
                return i
    return None


def require_free(node: Node) -> None:
    wanted = [(node.host, what, port) for what, port in node.service.ports.items()]
    wanted += [(LOOPBACK, what, port) for what, port in node.health_ports.items()]
    taken = [f"  {host}:{port} ({what}) is taken by {processes.port_holder(port)}" for host, what, port in wanted
             if processes.port_in_use(port, host)]
    if taken:
        raise StackError(f"cannot start {node.name}: a port it needs is in use.\n" + "\n".join(taken)
                         + "\n  Stop that process (a stack left behind by a crash: `make stop`), then try again.")


class Cluster:
    """The HA stack's nodes, by name; start, stop, kill and restart them one by one."""

    def __init__(self, runtime: DaprRuntime, llm_env: dict[str, str], secure: bool = False,
                 app: ReplicaApp = SERVICE) -> None:
        nodes = [make(i, runtime.bin_dir, secure) for make in (placement_node, scheduler_node) for i in range(3)]
        nodes += [replica_node(i, runtime, llm_env, secure, app) for i in range(len(HA_HOSTS))]
        self.nodes = {node.name: node for node in nodes}

    def start(self, names: list[str]) -> None:
        """Start the named nodes side by side, then wait until each is ready."""
        started = []
        for name in names:
            node = self.nodes[name]
            require_free(node)
            log = LOG_DIR / f"{name}.log"
            with open(log, "ab") as out:
                out.write(f"\n===== {name} start =====\n".encode())
            process = processes.spawn(name, node.service.argv, env=node.env, log=log, append=True)
            started.append((node, process, time.monotonic()))
        for node, process, t0 in started:
            log = LOG_DIR / f"{node.name}.log"
            processes.wait_until(node.service.ready, f"{node.name} on {node.host}", process=process, log=log,
                                 timeout_s=120 if node.replica else 60)
            say(f"{node.name}: ready on {node.host} in {time.monotonic() - t0:.1f} s (log: {processes.rel(log)})")
        if any(not node.replica for node, _, _ in started):
            processes.wait_until(lambda: placement_leader() is not None, "a placement leader")

    def processes(self, name: str) -> list[psutil.Process]:
        """The node's process with its descendants (a replica: `dapr run`, its daprd and its app)."""
        process = processes.recorded(name)
        return [] if process is None else [process, *process.children(recursive=True)]

    def kill(self, name: str) -> None:
        """SIGKILL the node and, for a replica, its sidecar and app: a crash, nothing cleaned up."""
        members = self.processes(name)
        for process in members:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(members, timeout=10)

    def signal_host(self, i: int, signum: int) -> None:
        """SIGSTOP cuts host i off (its processes freeze, their sockets stay open); SIGCONT brings it back."""
        for process in [p for name, node in self.nodes.items() if node.host == HA_HOSTS[i]
                        for p in self.processes(name)]:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signum)

    def whole(self) -> bool:
        """Every node runs and answers, and one placement node leads."""
        return all(node.service.ready() for node in self.nodes.values()) and placement_leader() is not None

    def dead(self) -> list[str]:
        return [name for name in self.nodes if processes.recorded(name) is None]

    def heal(self) -> list[str]:
        """Start again every node that is not running (killed, or ended by itself); return their names."""
        dead = self.dead()
        for name in dead:  # what a dead `dapr run` left (its sidecar or app), and the stale record
            (processes.stop_dapr_run if self.nodes[name].replica else processes.stop)(name)
        self.start([name for name in dead if not self.nodes[name].replica])
        self.start([name for name in dead if self.nodes[name].replica])
        return dead

    def stop(self) -> None:
        """Replicas first (each app drains and deregisters), side by side; then the control plane."""
        with ThreadPoolExecutor() as pool:
            list(pool.map(processes.stop_dapr_run, [name for name, node in self.nodes.items() if node.replica]))
            list(pool.map(processes.stop, [name for name, node in self.nodes.items() if not node.replica]))


def _shared_services(runtime: DaprRuntime, secure: bool) -> list[Service]:
    """Redis, Zipkin and, in secure mode, sentry: single, on 127.0.0.1."""
    redis, zipkin = services.control_plane(runtime.bin_dir, secure)[0], services.zipkin_service()
    if processes.recorded("redis") is not None:
        secure_mode.check_mode("redis", services.redis_requires_password(), secure)
    if secure:
        secure_mode.ensure_redis_password()
        if not (secure_mode.SENTRY_CREDENTIALS / "ca.crt").exists() and processes.recorded("sentry") is None:
            secure_mode.create_sentry_credentials(runtime.bin_dir)
    return [redis, *([zipkin] if zipkin else []), *([secure_mode.sentry_service(runtime.bin_dir)] if secure else [])]


@contextlib.contextmanager
def running(llm_env: dict[str, str], secure: bool = False, app: ReplicaApp = SERVICE) -> Iterator[Cluster]:
    """The HA stack for the duration of the block, `app` as its replicas; stops what it started, and nothing it
    found running."""
    if secure and app != SERVICE:
        raise StackError("secure mode runs the service only (its Redis password reaches ./resources, not the "
                         "app's own components)")
    runtime = find_runtime()
    services.stop_leftovers()
    started: dict[str, tuple[Service, psutil.Process]] = {}
    shared = _shared_services(runtime, secure)  # first: it creates sentry's root certificate, which sidecars get
    cluster = Cluster(runtime, llm_env, secure, app)
    try:
        for service in shared:
            if (processes.recorded(service.name) is not None and service.ready()) or (
                    service.name == "redis" and not secure and services.redis_ping()):
                say(f"{service.name}: reusing the one running on {LOOPBACK}")
                continue
            if service.name == "redis" and services.redis_ping():
                raise StackError(f"secure mode needs its own Redis with a password, but another listens on "
                                 f"{LOOPBACK}:{settings.REDIS_PORT}: {processes.port_holder(settings.REDIS_PORT)}. "
                                 "Stop it, or leave TDA_SECURE unset.")
            (DATA_DIR / service.name).mkdir(parents=True, exist_ok=True)
            services.require_free(service.ports)
            started[service.name] = service, processes.spawn(service.name, service.argv)
        # Zipkin's JVM takes ~10 s: the control plane starts meanwhile; the sidecars, which trace to it, after.
        def ready(name: str) -> None:
            processes.wait_until(started[name][0].ready, name, process=started[name][1], log=LOG_DIR / f"{name}.log")

        for name in [name for name in started if name != "zipkin"]:
            ready(name)
        cluster.start([name for name, node in cluster.nodes.items() if not node.replica])
        if "zipkin" in started:
            ready("zipkin")
        say(f"placement: {settings.HA_PLACEMENT_IDS[placement_leader() or 0]} leads the Raft cluster")
        cluster.start([name for name, node in cluster.nodes.items() if node.replica])
        yield cluster
    finally:
        cluster.stop()
        services.stop_services(list(started))


def serve(app_id: str = settings.SERVICE_APP_ID) -> int:
    """`make serve-ha [APP=<app id>]`: the HA stack in the foreground until Ctrl+C or SIGTERM."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Both set here: a shell that starts a command in the background hands it SIGINT ignored, and Python
    # then leaves it ignored (make serve does the same, in tools/stack/commands.py).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    secure = secure_mode.secure_mode_requested()
    llm_env = dict(os.environ)
    say(choose_llm(llm_env).banner)
    try:
        with running(llm_env, secure=secure, app=REPLICA_APPS[app_id]) as cluster:
            for i, host in enumerate(HA_HOSTS):
                say(f"host {host}: {settings.HA_PLACEMENT_IDS[i]}, {settings.HA_SCHEDULER_IDS[i]}, sidecar http://{host}:"
                    f"{settings.HA_SIDECAR_HTTP_PORTS[i]}, app http://{LOOPBACK}:{settings.HA_APP_PORTS[i]}/run")
            say(f"ready{' (secure mode)' if secure else ''}. Redis and Zipkin are single, on {LOOPBACK}. "
                "Ctrl+C stops all of it.")
            reported: set[str] = set()
            while True:  # until Ctrl+C; a node that dies stays down (the rest carries on), and is said once
                for name in sorted(set(cluster.dead()) - reported):
                    say(f"{name} has stopped (killed, or ended by itself: {processes.rel(LOG_DIR / f'{name}.log')}); "
                        "the other hosts carry on")
                    reported.add(name)
                time.sleep(1)
    except KeyboardInterrupt:
        say("stopped")
    except StackError as exc:
        print(f"[stack] error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["serve"]:
        return serve()
    if len(args) == 3 and args[:2] == ["serve", "--app"] and args[2] in REPLICA_APPS:
        return serve(args[2])
    print(f"usage: python -m tools.ha serve [--app {'|'.join(REPLICA_APPS)}]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
