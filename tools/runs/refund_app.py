"""examples/approval/refund_agent.py under `dapr run`, in the background: for its demo and its tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import redis

from tools.stack import commands as stack
from tools.stack.llm import choose_llm
from tools.stack.processes import http_ok, recorded, require_free, spawn, stop_dapr_run, wait_until
from tools.stack.runtime import DaprRuntime
from tools.stack.settings import (
    APPROVAL_APP_ID,
    APPROVAL_APP_PORT,
    APPROVAL_REPLICA_PORTS,
    APPROVAL_SIDECAR_HTTP_PORT,
    APPROVAL_SIDECAR_METRICS_PORT,
    REDIS_PORT,
)

SCRIPT = "examples/approval/refund_agent.py"


def approval_app(app_port: int, sidecar_http_port: int, sidecar_metrics_port: int) -> list[str]:
    """The `dapr run` of examples/approval/README.md: the stack's components plus the refunds store."""
    return ["--app-id", APPROVAL_APP_ID, "--resources-path", "./resources",
            "--resources-path", "./examples/approval/resources", "-p", str(app_port),
            "--log-level", "warn", f"--metrics-port={sidecar_metrics_port}",
            f"--dapr-http-port={sidecar_http_port}", "--", "python", SCRIPT]


APPROVAL_APP = approval_app(APPROVAL_APP_PORT, APPROVAL_SIDECAR_HTTP_PORT, APPROVAL_SIDECAR_METRICS_PORT)
APP_URL = f"http://127.0.0.1:{APPROVAL_APP_PORT}"
NAME = "refund-agent"  # what the stack records its `dapr run` as


class RefundApp:
    """The refund agent's `dapr run`, restartable; `script` replaces the agent script (a test's wrapper);
    `second_replica`: on APPROVAL_REPLICA_PORTS instead, recorded under another name."""

    def __init__(self, runtime: DaprRuntime, llm_env: dict[str, str], log: Path,
                 env: dict[str, str] | None = None, script: str = SCRIPT, second_replica: bool = False) -> None:
        self.ports = APPROVAL_REPLICA_PORTS if second_replica else (
            APPROVAL_APP_PORT, APPROVAL_SIDECAR_HTTP_PORT, APPROVAL_SIDECAR_METRICS_PORT)
        self.name = f"{NAME}-2" if second_replica else NAME
        app = [script if arg == SCRIPT else arg for arg in approval_app(*self.ports)]
        self.argv, self.env = stack.dapr_run(runtime, app, choose_llm(llm_env), base_env=llm_env)
        self.env |= env or {}
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def start(self, append: bool = False) -> None:
        # A sidecar just killed may still be letting go of its ports.
        require_free(dict(zip(("refund agent", "its sidecar HTTP", "its sidecar metrics"), self.ports, strict=True)),
                     grace_s=10)
        process = spawn(self.name, self.argv, env=self.env, log=self.log, append=append)
        wait_until(lambda: ready(*self.ports[:2]), "refund_agent.py under dapr run", process=process, log=self.log)

    def processes(self) -> tuple[psutil.Process, psutil.Process]:
        """(the app, its daprd), children of the recorded `dapr run`."""
        cli = recorded(self.name)
        if cli is None:
            raise LookupError("the refund agent is not running")
        children = cli.children()
        return next(p for p in children if p.name() != "daprd"), next(p for p in children if p.name() == "daprd")

    def stop(self) -> None:
        stop_dapr_run(self.name)

    def sidecar_grpc_port(self) -> int:
        """Its daprd's gRPC port (`dapr run` picks it at random), found by the sidecar's HTTP port."""
        daprd = self.processes()[1].cmdline()
        return int(daprd[daprd.index("--dapr-grpc-port") + 1])


def ready(app_port: int = APPROVAL_APP_PORT, sidecar_http_port: int = APPROVAL_SIDECAR_HTTP_PORT) -> bool:
    return (http_ok(f"http://127.0.0.1:{sidecar_http_port}/v1.0/healthz")
            and http_ok(f"http://127.0.0.1:{app_port}/hitl/approvals"))


@contextlib.contextmanager
def refund_app_running(runtime: DaprRuntime, llm_env: dict[str, str], log: Path, **kwargs) -> Iterator[RefundApp]:
    app = RefundApp(runtime, llm_env, log, **kwargs)
    app.start()
    try:
        yield app
    finally:
        app.stop()


def refund_records(order_id: str) -> list[dict]:
    """The order's refund records in the refunds store, read from Redis: each one's key, its data, and its
    version, which Dapr's Redis state store raises at every write (1: written once, whatever the retries)."""
    client = redis.Redis(port=REDIS_PORT, decode_responses=True)
    try:
        keys = client.scan_iter(match=f"{APPROVAL_APP_ID}||refund:*")
        records = [{"key": key, **client.hgetall(key)} for key in keys]
    finally:
        client.close()
    return [record for record in records if f'"{order_id}"' in record.get("data", "")]
