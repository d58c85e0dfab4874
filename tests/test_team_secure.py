"""The team in secure mode (`TDA_SECURE=1`): both sidecars hold an mTLS identity from sentry, and the Poet's
WorkflowAccessPolicy (examples/team/access-policy/poet-callers.yaml) lets the service's app start its runs.
The stack is restarted in secure mode for this module, as tests/test_security.py does (it runs last)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from test_team import FINAL, HAIKU

from tools.runs.team_app import NAME, POET, PoetApp
from tools.stack import processes, secure, services, settings
from tools.stack.processes import stop_dapr_run
from tools.stack.settings import LOG_DIR, ROOT, STATE_DIR

pytestmark = pytest.mark.secure
POLICY = "./examples/team/access-policy"
TEAM_RESOURCES = "./examples/team/resources"


def secure_team_resources(target) -> str:
    """examples/team/resources with the Redis password read from the secret store, as secure mode wants."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for source in sorted((ROOT / TEAM_RESOURCES).glob("*.yaml")):
        component = yaml.safe_load(source.read_text())
        for item in component["spec"].get("metadata") or []:
            if item["name"] == "redisPassword":
                item.pop("value", None)
                item["secretKeyRef"] = {"name": secure.REDIS_SECRET_NAME, "key": secure.REDIS_SECRET_NAME}
                component["auth"] = {"secretStore": "redis-secretstore"}
        (target / source.name).write_text(yaml.safe_dump(component, sort_keys=False))
    return str(target)


@pytest.fixture(scope="module")
def secure_team(service_session, local_stack, llm_env):
    """The session's service restarted on a stack in secure mode, and the Poet beside it with mTLS, its
    registry store's password from the secret store, and its workflow access policy."""
    if processes.recorded("redis") is None and processes.port_in_use(settings.REDIS_PORT):
        # (tests/test_security.py, before this module, may have stopped the stack's own: then it starts again)
        pytest.skip(f"secure mode needs the stack's own Redis, but another listens on {settings.REDIS_PORT}")
    stop_dapr_run(NAME)
    service_session.stop()
    for name in ("placement", "scheduler", "redis"):
        processes.stop(name)
    runtime, started = services.up(tracing=False, secure=True)
    service_session.reconfigure(config=secure.SERVICE_CONFIG, secure=True)
    service_session.start()
    # A resources folder of its own: secure mode rewrites the folder it is given, and the service's sidecar
    # hot-reloads (and dies on) a folder rewritten under it.
    own = STATE_DIR / "team-poet-resources"
    shutil.rmtree(own, ignore_errors=True)
    shutil.copytree(service_session.resources, own)
    poet = PoetApp(runtime, llm_env, LOG_DIR / "team-poet-secure-tests.log", resources=own,
                   config=settings.SECURE_DIR / "caller-config.yaml", secure=True)
    at = poet.argv.index(TEAM_RESOURCES)
    poet.argv[at:at + 1] = [secure_team_resources(STATE_DIR / "team-resources-secure"), "--resources-path", POLICY]
    poet.start(registered=False)  # the registry check reads Redis without the password
    yield service_session
    poet.stop()
    service_session.stop()
    service_session.reconfigure()
    services.stop_services(started)


def test_in_secure_mode_the_poets_access_policy_lets_the_service_start_its_runs(secure_team, scripted_llm):
    task = scripted_llm.task("Ask the Poet for a haiku about trust.")
    poet_task = scripted_llm.task("Write a haiku about trust.")
    scripted_llm.call_tool_when(task, POET, {"task": poet_task}, FINAL)
    scripted_llm.answer_when(poet_task, HAIKU)
    status = secure_team.wait_until_done(secure_team.start_run(task))
    assert status["runtime_status"] == "COMPLETED", (status.get("failure_details") or {}).get("message") or status
    answer = json.loads(status["serialized_output"])["content"]
    assert json.loads(answer.removeprefix("From the Poet: "))["content"] == HAIKU, answer
