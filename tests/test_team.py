"""examples/team/poet_agent.py: a second agent, in an app of its own, that the service's assistant finds in the
registry and hands work to as a child workflow, durably across the two apps.

The scripted LLM plays both models: the assistant's calls the tool `Poet` (the name dapr-agents gives the
registered agent) with a task of its own, the Poet's answers that task with a haiku. Each test's tasks carry
its script's token; where the Poet's answer must be held on its own, the Poet's task carries the token of a
second script."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import record_figure, wait_for
from tools.proof import figures
from tools.runs.team_app import (
    NAME,
    POET,
    TEAM_APP,
    PoetApp,
    registry_entry,
    registry_index,
)
from tools.runs.workflows import family, sidecar_grpc_port
from tools.stack.processes import alive, recorded, stop_dapr_run
from tools.stack.settings import LOG_DIR, ROOT, SERVICE_APP_ID, TEAM_APP_ID

HAIKU = "Rain on the tin roof;\nthe workflow keeps its place,\nthe answer waits."
FINAL = "From the Poet: {tool_result}"
GONE_WAIT_S = 20.0  # how long a run delegated to a Poet that is gone is watched still waiting


@pytest.fixture(scope="module")
def poet_config(local_stack, llm_env, service_session):
    # The service's resources folder (the tests' copy): the same stores, the same LLM and its timeout.
    app = PoetApp(local_stack, llm_env, LOG_DIR / "team-poet-tests.log", resources=service_session.resources)
    yield app
    app.stop()


@pytest.fixture
def poet(poet_config: PoetApp, service) -> PoetApp:
    """The module's Poet, beside the session's service; started again if an earlier test stopped it."""
    if recorded(NAME) is None:
        poet_config.start(append=True, registered=False)
    return poet_config


@pytest.fixture
def poet_llm(scripted_llm_server, request):
    """A second script, for the Poet's task alone: its answer can be held while the assistant's go through."""
    script = scripted_llm_server.script(owner=f"{request.node.nodeid} (the Poet)")
    yield script
    script.close()


def delegate(scripted_llm, poet_script, topic: str) -> tuple[str, str]:
    """A task for the assistant whose model calls Poet(task=...), and the Poet's task (its script's)."""
    task = scripted_llm.task(f"Ask the Poet for a haiku about {topic}.")
    poet_task = poet_script.task(f"Write a haiku about {topic}.")
    scripted_llm.call_tool_when(task, POET, {"task": poet_task}, FINAL)
    poet_script.answer_when(poet_task, HAIKU)
    return task, poet_task


def answer_of(status: dict) -> str:
    assert status["runtime_status"] == "COMPLETED", status
    return json.loads(status["serialized_output"])["content"]


def task_calls(script, text: str) -> list[str]:
    """The calls (summaries left out) that mention `text`, each as the messages it sent."""
    return [json.dumps(call.messages) for call in script.calls_mentioning(text) if not call.is_summary]


def offered(script, text: str) -> set[tuple[str, ...]]:
    """The tool lists offered to the model by the calls that mention `text`."""
    return {call.tools for call in script.calls_mentioning(text) if not call.is_summary}


def test_the_assistant_delegates_to_the_poet_it_finds_in_the_registry_and_answers_with_its_haiku(
        poet, service, scripted_llm):
    entry = registry_entry()
    assert entry is not None and POET in registry_index(), "the Poet is not in the service's registry"
    assert entry["agent"]["appid"] == TEAM_APP_ID, entry
    task, poet_task = delegate(scripted_llm, scripted_llm, "rain")
    instance_id = service.start_run(task)
    answer = answer_of(service.wait_until_done(instance_id))
    # The tool's result is the child run's whole output: the Poet's message, content and all.
    assert json.loads(answer.removeprefix("From the Poet: "))["content"] == HAIKU, answer
    assert offered(scripted_llm, task) == {(POET,)}, "the assistant's model was not offered the tool Poet"
    (child,) = family(instance_id, sidecar_grpc_port(SERVICE_APP_ID))["children"]
    assert (child["workflow"], child["app_id"]) == (f"dapr.agents.{POET}.workflow", TEAM_APP_ID), child
    back = family(child["instance_id"], poet.sidecar_grpc_port())["parent"]
    assert back == {"instance_id": instance_id, "app_id": SERVICE_APP_ID}, back
    assert len(task_calls(scripted_llm, poet_task)) == 1


def test_the_poet_killed_mid_child_run_both_runs_complete_after_its_restart(poet, service, scripted_llm, poet_llm):
    task, poet_task = delegate(scripted_llm, poet_llm, "a crash")
    poet_llm.hold()
    instance_id = service.start_run(task)
    wait_for(lambda: poet_llm.in_flight == 1, "the Poet's run to wait on its LLM")
    (child,) = family(instance_id, sidecar_grpc_port(SERVICE_APP_ID))["children"]
    app, daprd = poet.processes()
    for process in (app, daprd):
        process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not alive(app) and not alive(daprd), "the killed Poet and its sidecar to be gone")
    stop_dapr_run(NAME)
    poet.start(append=True, registered=False)
    restarted_s = time.monotonic() - killed
    poet_llm.release()
    answer = answer_of(service.wait_until_done(instance_id))
    record_figure("Poet killed mid child run", restart_s=round(restarted_s, 1),
                  kill_to_complete_s=round(time.monotonic() - killed, 1))
    assert HAIKU.splitlines()[0] in answer, answer
    assert family(instance_id, sidecar_grpc_port(SERVICE_APP_ID))["children"] == [child]
    poet_calls, assistant_calls = task_calls(poet_llm, poet_task), task_calls(scripted_llm, task)
    assert len(poet_calls) == 2 and len(set(poet_calls)) == 1, "the Poet's LLM was not asked again the cut call alone"
    assert len(assistant_calls) == len(set(assistant_calls)) == 2, "the assistant's LLM was asked something again"


@pytest.mark.known_limitation
def test_with_the_poet_gone_the_parent_run_waits_retrying_with_no_deadline(poet, service, scripted_llm, poet_llm):
    """SIGKILLed, the Poet leaves its registry entry behind and the assistant still calls it. Dapr then retries
    creating the child run on the missing app every few seconds ("the app may not be available" in the service's
    sidecar log) and dapr-agents sets no timeout on the child workflow: the parent run neither fails nor
    ends; it completes once the Poet is back."""
    app, daprd = poet.processes()
    for process in (app, daprd):
        process.send_signal(signal.SIGKILL)
    wait_for(lambda: not alive(app) and not alive(daprd), "the killed Poet and its sidecar to be gone")
    stop_dapr_run(NAME)
    assert registry_entry() is not None, "a killed Poet left the registry"
    task, _ = delegate(scripted_llm, poet_llm, "absence")
    log = service.log.read_text(errors="replace")
    instance_id = service.start_run(task)
    started = time.monotonic()
    while time.monotonic() - started < GONE_WAIT_S:  # watched for a while: it must not end
        assert service.status(instance_id)["runtime_status"] == "RUNNING"
        time.sleep(1)
    retries = service.log.read_text(errors="replace")[len(log):].count(
        f"failed to invoke 'CreateWorkflowInstance' on remote app '{TEAM_APP_ID}' (the app may not be available)")
    record_figure("Poet gone for good", watched_s=GONE_WAIT_S, child_creation_retries_logged=retries)
    assert retries >= 2, f"the sidecar logged {retries} retries of the child run's creation"
    poet.start(append=True, registered=False)
    assert HAIKU.splitlines()[0] in answer_of(service.wait_until_done(instance_id))


def test_a_clean_shutdown_takes_the_poet_out_of_the_registry_and_a_restarted_assistant_stops_offering_it(
        poet, service, service_session, scripted_llm):
    assert registry_entry() is not None
    poet.stop()
    assert registry_entry() is None and POET not in registry_index(), "the Poet is still in the registry"
    service_session.stop()
    service_session.start()
    task = scripted_llm.task("Write a haiku about leaving.")
    scripted_llm.answer_when(task, HAIKU)
    answer_of(service.wait_until_done(service.start_run(task)))
    assert offered(scripted_llm, task) == {()}, "the restarted assistant still offers a tool"


@pytest.mark.known_limitation
def test_the_running_assistant_keeps_offering_a_poet_that_left_the_registry(poet, service, scripted_llm):
    """`load_tools` adds the agents it finds to the assistant's tools and never removes one: until the service
    restarts, the Poet is offered after it left the registry (and a call of it waits as the test above shows)."""
    task = scripted_llm.task("Say hello.")
    scripted_llm.answer_when(task, "Hello.")
    answer_of(service.wait_until_done(service.start_run(task)))  # the assistant has loaded the Poet by now
    poet.stop()
    assert registry_entry() is None
    later = scripted_llm.task("Say hello again.")
    scripted_llm.answer_when(later, "Hello again.")
    answer_of(service.wait_until_done(service.start_run(later)))
    assert offered(scripted_llm, later) == {(POET,)}


@pytest.mark.known_limitation
def test_the_assistant_restarted_while_its_run_waits_on_the_poet_fails_that_run(poet, service, service_session,
                                                                                scripted_llm, poet_llm):
    """The tools `load_tools` finds live in the process that ran it. A restarted service replays the parent run
    without them (the activity's result is replayed, its side effect is not): the Poet's tool call is no longer
    a child workflow but a tool activity, and the replay fails with a NonDeterminismError."""
    task, _ = delegate(scripted_llm, poet_llm, "a restart")
    poet_llm.hold()
    instance_id = service.start_run(task)
    wait_for(lambda: poet_llm.in_flight == 1, "the Poet's run to wait on its LLM")
    app, daprd = service.processes()
    for process in (app, daprd):
        process.send_signal(signal.SIGKILL)
    wait_for(lambda: not alive(app) and not alive(daprd), "the killed service to be gone")
    stop_dapr_run("service")
    service_session.start()
    poet_llm.release()
    status = service.wait_until_done(instance_id)
    assert status["runtime_status"] == "FAILED", status
    assert status["failure_details"]["error_type"] == "NonDeterminismError", status
    assert "called call_sub_orchestrator with ID=4" in status["failure_details"]["message"], status


def test_make_team_demo_prints_what_docs_team_md_shows(poet_config, service_session):
    # The demo starts the service and the Poet itself, on the same ports; the next tests' fixtures restart them.
    stop_dapr_run(NAME)
    service_session.stop()
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tools.runs.team_demo"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    took_s = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    parent = re.search(r"run ([0-9a-f]{32}) started", out).group(1)
    steps = [f"lists ['Assistant', '{POET}']", f"app {TEAM_APP_ID}, workflow dapr.agents.{POET}.workflow",
             f"offered the tools ['{POET}']", f"parent run {parent}  app {SERVICE_APP_ID}  RUNNING",
             f"app {TEAM_APP_ID}  RUNNING", "SIGKILL to the Poet", f"parent run {parent} COMPLETED",
             f"its parent: run {parent} of app {SERVICE_APP_ID}", "the answer: Here is the Poet's haiku",
             "the Poet's LLM was asked 2 times", "1 distinct", "the assistant's LLM was asked 2 times", "2 distinct"]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), out
    assert took_s < 180, f"the demo took {took_s:.0f} s"
    figures.keep_sample("sample: make team-demo", out)
    problems = figures.sample_problems("sample: make team-demo", out,
                                       varies=lambda line: line.startswith("[stack]") or re.match(r"-?\d+ \w+", line))
    assert not problems, "\n".join(problems)


def test_the_examples_readme_runs_what_the_demo_and_the_tests_run():
    readme = (ROOT / "examples" / "team" / "README.md").read_text()
    assert "    dapr run " + " ".join(TEAM_APP) + "\n" in readme
    registry = (ROOT / "examples" / "team" / "resources" / "team-registry.yaml").read_text()
    assert f"value: {SERVICE_APP_ID}\n" in registry, "the team registry's key prefix is not the service's app id"
