"""examples/team/poet_agent.py under `dapr run`, in the background: the Poet, for the team demo and its tests."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import redis

from tools.stack import commands as stack
from tools.stack.llm import choose_llm
from tools.stack.processes import http_ok, recorded, require_free, spawn, stop_dapr_run, wait_until
from tools.stack.runtime import DaprRuntime
from tools.stack.settings import (
    REDIS_PORT,
    SERVICE_APP_ID,
    TEAM_APP_ID,
    TEAM_APP_PORT,
    TEAM_SIDECAR_HTTP_PORT,
    TEAM_SIDECAR_METRICS_PORT,
)

SCRIPT = "examples/team/poet_agent.py"
NAME = "team-poet"  # what the stack records its `dapr run` as
POET = "Poet"  # the agent's name: its registry entry, and the tool the assistant is given
# The registry entries, as Redis holds them: the Poet writes them with the service's app id as key prefix
# (examples/team/resources/team-registry.yaml), where the assistant's `load_tools` reads.
REGISTRY_INDEX_KEY = f"{SERVICE_APP_ID}||agents:default:_index"
POET_REGISTRY_KEY = f"{SERVICE_APP_ID}||agents:default:{POET}"
# The workflow the assistant's tool calls on the Poet's app, as dapr-agents names it.
POET_WORKFLOW = f"dapr.agents.{POET}.workflow"


def team_app() -> list[str]:
    """The `dapr run` of examples/team/README.md: the stack's components plus the team registry."""
    return ["--app-id", TEAM_APP_ID, "--resources-path", "./resources",
            "--resources-path", "./examples/team/resources", "-p", str(TEAM_APP_PORT),
            "--log-level", "warn", f"--metrics-port={TEAM_SIDECAR_METRICS_PORT}",
            f"--dapr-http-port={TEAM_SIDECAR_HTTP_PORT}", "--", "python", SCRIPT]


TEAM_APP = team_app()
APP_URL = f"http://127.0.0.1:{TEAM_APP_PORT}"


class PoetApp:
    """The Poet's `dapr run`, restartable. `resources` replaces `./resources` (the tests' copy of it);
    `config`: a sidecar configuration (secure mode's access control)."""

    def __init__(self, runtime: DaprRuntime, llm_env: dict[str, str], log: Path, resources: Path | None = None,
                 env: dict[str, str] | None = None, config: Path | None = None, secure: bool = False) -> None:
        self.argv, self.env = stack.dapr_run(runtime, TEAM_APP, choose_llm(llm_env), resources=resources,
                                             config=config, secure=secure, base_env=llm_env)
        self.env |= env or {}
        self.log = log

    def start(self, append: bool = False, registered: bool = True) -> None:
        """Start it and wait until it answers (and, if `registered`, until it is in the registry)."""
        require_free({"the Poet": TEAM_APP_PORT, "its sidecar HTTP": TEAM_SIDECAR_HTTP_PORT,
                      "its sidecar metrics": TEAM_SIDECAR_METRICS_PORT}, grace_s=10)
        process = spawn(NAME, self.argv, env=self.env, log=self.log, append=append)
        wait_until(lambda: ready() and (not registered or registry_entry() is not None),
                   "poet_agent.py under dapr run, in the registry", process=process, log=self.log)

    def processes(self) -> tuple[psutil.Process, psutil.Process]:
        """(the app, its daprd), children of the recorded `dapr run`."""
        cli = recorded(NAME)
        if cli is None:
            raise LookupError("the Poet is not running")
        children = cli.children()
        return next(p for p in children if p.name() != "daprd"), next(p for p in children if p.name() == "daprd")

    def sidecar_grpc_port(self) -> int:
        daprd = self.processes()[1].cmdline()
        return int(daprd[daprd.index("--dapr-grpc-port") + 1])

    def stop(self) -> None:
        stop_dapr_run(NAME)


def ready() -> bool:
    return (http_ok(f"http://127.0.0.1:{TEAM_SIDECAR_HTTP_PORT}/v1.0/healthz")
            and http_ok(f"{APP_URL}/openapi.json"))


def registry_entry(name: str = POET) -> dict | None:
    """The agent's entry in the service's registry, as the assistant reads it, or None."""
    client = redis.Redis(port=REDIS_PORT, decode_responses=True)
    try:
        data = client.hget(f"{SERVICE_APP_ID}||agents:default:{name}", "data")
    finally:
        client.close()
    return json.loads(data) if data else None


def registry_index() -> list[str]:
    """The names the registry's index lists."""
    client = redis.Redis(port=REDIS_PORT, decode_responses=True)
    try:
        data = client.hget(REGISTRY_INDEX_KEY, "data")
    finally:
        client.close()
    return json.loads(data).get("agents", []) if data else []
