"""One real local stack per test session: Redis, placement, scheduler, the
scripted LLM, and the service started with the README's `dapr run` command.

Set TDA_KEEP_STACK=1 to leave nothing running but see the logs in .stack/logs/.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import httpx
import psutil
import pytest
import redis

from tools import stack
from tools.scripted_llm import ScriptedLLM

SCRIPTED_LLM_PORT = 18080
SERVICE_URL = "http://127.0.0.1:8001"
SIDECAR_URL = "http://127.0.0.1:3500"
SERVICE_APP_ID = "durable-agent-service"
RUN_TIMEOUT_S = 60.0


def wait_for(check: Callable[[], object], what: str, timeout_s: float = RUN_TIMEOUT_S, interval_s: float = 0.1):
    """Poll `check` until it returns something truthy, and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


FIGURES = stack.STATE_DIR / "figures.jsonl"


def record_figure(test: str, **figures: object) -> None:
    """Keep a measured figure (a duration, a count) for the end-of-session report."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(FIGURES, "a") as out:
        out.write(json.dumps({"test": test, **figures}) + "\n")


def pytest_collection_modifyitems(items) -> None:
    """The secure-mode tests restart the stack with TLS; they go last."""
    items.sort(key=lambda item: item.get_closest_marker("secure") is not None)


def pytest_sessionstart(session) -> None:
    FIGURES.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES.exists():
        terminalreporter.section("figures measured by this run")
        for line in FIGURES.read_text().splitlines():
            terminalreporter.write_line(line)


def workflow_key_mentioning(redis_client, text: str) -> str | None:
    """The Redis key of the run whose conversation mentions `text` (its id is the key's suffix)."""
    for key in redis_client.scan_iter(match=f"{SERVICE_APP_ID}||assistant:_workflow_*", count=1000):
        if text in (redis_client.hget(key, "data") or ""):
            return key
    return None


def env_without_llm_settings() -> dict[str, str]:
    """The test process's environment minus any LLM the developer configured."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}


@pytest.fixture(scope="session")
def scripted_llm_server():
    stack.require_free({"scripted LLM": SCRIPTED_LLM_PORT})
    server = ScriptedLLM(port=SCRIPTED_LLM_PORT).start()
    yield server
    server.stop()


@pytest.fixture
def scripted_llm(scripted_llm_server: ScriptedLLM) -> ScriptedLLM:
    """The session's scripted LLM, reset for this test."""
    scripted_llm_server.reset()
    return scripted_llm_server


@pytest.fixture(scope="session")
def llm_env(scripted_llm_server: ScriptedLLM) -> dict[str, str]:
    """Environment that makes `make run`/`make serve` use the scripted LLM."""
    return scripted_llm_server.client_env()


@pytest.fixture(scope="session")
def local_stack():
    runtime, started = stack.up()
    yield runtime
    for name in reversed(started):
        stack.stop(name)


@pytest.fixture(scope="session")
def redis_client(local_stack) -> redis.Redis:
    client = redis.Redis(host="127.0.0.1", port=stack.REDIS_PORT, decode_responses=True)
    yield client
    client.close()


# The shipped LLM timeout is 60 s; the suite cuts it to this so that the
# hanging-LLM test takes seconds, not minutes. Everything else is as shipped.
TEST_LLM_TIMEOUT = "3s"


class Service:
    """durable_agent_service.py under the README's `dapr run` flags, restartable."""

    def __init__(self, runtime: stack.DaprRuntime, env: dict[str, str]) -> None:
        llm = stack.choose_llm(env)
        # A folder of its own: `make serve` in a test rewrites the shared one.
        self.resources = stack.STATE_DIR / "resources-tests"
        shutil.rmtree(self.resources, ignore_errors=True)
        shutil.copytree(llm.resources, self.resources)
        resiliency = self.resources / "resiliency.yaml"
        resiliency.write_text(resiliency.read_text().replace("llm: 60s", f"llm: {TEST_LLM_TIMEOUT}"))
        self.argv = stack.dapr_run_argv(runtime, stack.SERVICE_APP, self.resources)
        self.env = runtime.env(env) | llm.env
        self.plain_argv, self.plain_env = list(self.argv), dict(self.env)
        self.log = stack.LOG_DIR / "service.log"
        self.http = httpx.Client(base_url=SERVICE_URL, timeout=30)
        self.sidecar = httpx.Client(base_url=SIDECAR_URL, timeout=30)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        # Append, so one log holds every start of the session.
        with open(self.log, "ab") as log:
            log.write(b"\n===== service start =====\n")
        stack.start_service(self.argv, self.env, self.log, append=True)

    def reconfigure(self, config: Path | None = None, secure: bool = False) -> None:
        """How the next start() runs: with `--config config` (None: the CLI's default
        configuration) and, if `secure`, as `TDA_SECURE=1 make serve` runs it: mTLS
        through sentry and every Redis password read from the secret store."""
        self.argv, self.env = list(self.plain_argv), dict(self.plain_env)
        if config is not None:
            self.argv[self.argv.index("run") + 1:self.argv.index("run") + 1] = ["--config", str(config)]
        if secure:
            resources = stack.secure_resources(self.resources, stack.STATE_DIR / "resources-tests-secure")
            self.argv[self.argv.index("--resources-path") + 1] = str(resources)
            self.env |= stack.mtls_env()

    @property
    def resources_in_use(self) -> Path:
        return Path(self.argv[self.argv.index("--resources-path") + 1])

    def stop(self) -> None:
        """Graceful: the app is interrupted first, then `dapr run` stops its sidecar."""
        stack.stop_dapr_run("service")

    def processes(self) -> tuple[psutil.Process, psutil.Process]:
        """(the app, its daprd), children of the recorded `dapr run`."""
        cli = stack.recorded("service")
        assert cli is not None, "the service is not running"
        children = cli.children()
        app = next(p for p in children if p.name() != "daprd")
        daprd = next(p for p in children if p.name() == "daprd")
        return app, daprd

    # -- API -----------------------------------------------------------------------
    def start_run(self, task: str) -> str:
        response = self.http.post("/run", json={"task": task})
        assert response.status_code == 200, response.text
        return response.json()["instance_id"]

    def status(self, instance_id: str) -> dict:
        response = self.http.get(f"/run/{instance_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_until_done(self, instance_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
        def done():
            response = self.http.get(f"/run/{instance_id}")
            if response.status_code == 500:
                # Known: the sidecar can read a run's state from Redis while it is half
                # written ("inbox key ... missing from state store"); the next read is fine.
                return None
            assert response.status_code == 200, response.text
            status = response.json()
            return status if status["runtime_status"] in {"COMPLETED", "FAILED", "TERMINATED"} else None

        return wait_for(done, f"run {instance_id} to finish", timeout_s)

    def close(self) -> None:
        self.http.close()
        self.sidecar.close()


@pytest.fixture(scope="session")
def service_session(local_stack, llm_env):
    svc = Service(local_stack, llm_env)
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()
        svc.close()


@pytest.fixture
def service(service_session: Service) -> Service:
    """The session's service, started again if an earlier test stopped it."""
    if stack.recorded("service") is None:
        service_session.start()
    return service_session
