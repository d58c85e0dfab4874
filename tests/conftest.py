"""One real local stack per test session: Redis, placement, scheduler, the
scripted LLM, and the service started with the README's `dapr run` command.

Set TDA_KEEP_STACK=1 to leave nothing running but see the logs in .stack/logs/.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import httpx
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
    return env_without_llm_settings() | {
        "OPENAI_BASE_URL": scripted_llm_server.endpoint,
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_MODEL": "scripted-model",
    }


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


@dataclass
class Service:
    http: httpx.Client
    sidecar: httpx.Client
    log: "os.PathLike[str]"

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
            status = self.status(instance_id)
            return status if status["runtime_status"] in {"COMPLETED", "FAILED", "TERMINATED"} else None

        return wait_for(done, f"run {instance_id} to finish", timeout_s)


@pytest.fixture(scope="session")
def service(local_stack, llm_env):
    """durable_agent_service.py under the README's `dapr run` flags, with the scripted LLM."""
    llm = stack.choose_llm(llm_env)
    stack.require_free(stack.SERVICE_PORTS)
    log = stack.LOG_DIR / "service.log"
    process = stack.spawn("service", stack.dapr_run_argv(local_stack, stack.SERVICE_APP, llm.resources),
                          env=local_stack.env(llm_env) | llm.env, log=log)
    try:
        stack.wait_until(stack.service_ready, "durable_agent_service.py under dapr run", process=process, log=log)
        with httpx.Client(base_url=SERVICE_URL, timeout=30) as http, \
                httpx.Client(base_url=SIDECAR_URL, timeout=30) as sidecar:
            yield Service(http, sidecar, log)
    finally:
        stack.stop("service")
