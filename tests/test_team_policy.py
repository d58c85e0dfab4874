"""The Poet's workflow access policy (examples/team/access-policy/): a delegation it refuses fails the
assistant's run at once, with the reason, instead of waiting like a delegation to a missing app. On the plain
stack no caller has an mTLS identity, so the policy refuses even the one app it names."""

from __future__ import annotations

import time

from test_team import FINAL, poet_config  # noqa: F401 (a fixture)

from tools.runs.team_app import NAME, POET
from tools.stack.processes import stop_dapr_run
from tools.stack.settings import LOG_DIR

POLICY = "./examples/team/access-policy"


def test_a_delegation_the_poets_access_policy_refuses_fails_the_parent_run_at_once_with_the_reason(
        poet_config, service, scripted_llm, local_stack, llm_env):  # noqa: F811
    stop_dapr_run(NAME)  # the module's Poet, without the policy; the next test's fixture starts it again
    argv = list(poet_config.argv)
    at = argv.index("./examples/team/resources") + 1
    poet_config.argv = [*argv[:at], "--resources-path", POLICY, *argv[at:]]
    poet_config.log = LOG_DIR / "team-poet-policy-tests.log"
    try:
        poet_config.start(append=True, registered=False)
        task = scripted_llm.task("Ask the Poet for a haiku about a closed door.")
        scripted_llm.call_tool_when(task, POET, {"task": scripted_llm.task("Write a haiku about a door.")}, FINAL)
        started = time.monotonic()
        status = service.wait_until_done(service.start_run(task), timeout_s=30)
        took_s = time.monotonic() - started
        assert status["runtime_status"] == "FAILED", status
        assert "access denied by workflow access policy" in status["failure_details"]["message"], status
        assert took_s < 10, f"the refused delegation took {took_s:.1f} s to fail the run"
    finally:
        stop_dapr_run(NAME)
        poet_config.argv, poet_config.log = argv, LOG_DIR / "team-poet-tests.log"
