"""The suite's fixtures: one real local stack per test session (Redis,
placement, scheduler, Zipkin), the scripted LLM, and the service started
with the README's `dapr run` command. Helpers live in tests/helpers.py."""

from __future__ import annotations

import pytest
import redis

from helpers import FIGURES, Service
from tools.stack import commands as stack
from tools.stack.processes import recorded, require_free
from tools.stack.scripted_llm import Script, ScriptedLLM
from tools.stack.settings import REDIS_PORT, SCRIPTED_LLM_PORT


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


@pytest.fixture(scope="session")
def scripted_llm_server():
    require_free({"scripted LLM": SCRIPTED_LLM_PORT})
    server = ScriptedLLM().start()
    yield server
    server.stop()
    # A run that reached the LLM after its test ended was neither awaited nor cleaned up by it.
    late = sorted({owner for owner, _ in server.late_calls})
    if late:
        pytest.fail(f"runs of these tests reached the LLM after the test had ended: {late}")


@pytest.fixture
def scripted_llm(scripted_llm_server: ScriptedLLM, request) -> Script:
    """This test's own script: it answers and logs the calls of the test's tasks (scripted_llm.task(...),
    or a text it claim()s), and only those; no other test's run can take its answers or join its log."""
    script = scripted_llm_server.script(owner=request.node.nodeid)
    yield script
    script.close()


@pytest.fixture(scope="session")
def llm_env(scripted_llm_server: ScriptedLLM) -> dict[str, str]:
    """Environment that makes `make run`/`make serve` use the scripted LLM."""
    return scripted_llm_server.client_env()


@pytest.fixture(scope="session")
def local_stack():
    with stack.running() as runtime:
        yield runtime


@pytest.fixture(scope="session")
def redis_client(local_stack) -> redis.Redis:
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, decode_responses=True)
    yield client
    client.close()


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
    if recorded("service") is None:
        service_session.start()
    return service_session
