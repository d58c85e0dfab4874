"""The README and the pages in docs/ cannot drift: the README's Python blocks
are the scripts, its `dapr run` lines are what `make run`/`make serve` run,
every command in a bash block is executed, here or by the test named for it,
every `make` target and every test they name exists, and every relative link
leads to a file (and heading) that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from helpers import wait_for
from tools.stack import commands as stack
from tools.stack.settings import SERVICE_APP_ID

README_LINES_MAX = 210  # near 200: a newcomer reads it in five minutes
PAGES = {path.relative_to(stack.ROOT).as_posix(): path.read_text()
         for path in [stack.ROOT / "README.md", *sorted((stack.ROOT / "docs").glob("*.md"))]}
README = PAGES["README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(text: str) -> list[tuple[str, str]]:
    return FENCE.findall(text)


def bash_commands(text: str) -> list[str]:
    commands = []
    for language, body in blocks(text):
        if language == "bash":
            for line in body.splitlines():
                command = re.sub(r"\s+#\s.*$", "", line).strip()
                if command:
                    commands.append(command)
    return commands


def prose(text: str) -> str:
    """The page without its fenced blocks."""
    return FENCE.sub("", text)


def code_spans(text: str) -> list[str]:
    """The inline code of the page's prose (``double`` spans too, even across a line break)."""
    return [span for _, span in re.findall(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", prose(text), re.S)]


def all_commands() -> list[tuple[str, str]]:
    """(page, command) for every command in a bash block of the README and the docs."""
    return [(page, command) for page, text in PAGES.items() for command in bash_commands(text)]


# Commands that need the whole session to themselves are run by these tests.
MAKE_RUN_TEST = "test_one_shot_run.py::test_make_run_prints_the_answer_of_the_configured_llm"
RUN_ELSEWHERE = {
    r"make run": MAKE_RUN_TEST,
    r"OPENAI_BASE_URL=\S+ OPENAI_MODEL=\S+ make run": MAKE_RUN_TEST,
    r"make test": "this suite",
    r"make bench": "test_tooling.py::test_the_benchmark_runs_in_smoke_mode_and_writes_its_figures",
    r"make doctor": "test_tooling.py::test_doctor_says_go_is_missing_when_the_runtime_still_has_to_be_built",
    r"dapr run --app-id durable-agent-minimal .*": "test_one_shot_run.py (via commands.MINIMAL_APP, checked below)",
    r"dapr run --app-id durable-agent-service .*": "every service test (via commands.SERVICE_APP, checked below)",
    r"make dashboard": "test_dashboard.py::test_a_running_run_shows_as_running_and_turns_completed_without_a_reload",
    r"make crash-demo": (
        "test_crash_demo.py::test_make_crash_demo_kills_the_app_mid_llm_call_and_the_same_run_completes"),
    r"\.venv/bin/python -m tools\.proof\.kube_check": (
        "test_kubernetes.py::test_every_kubernetes_manifest_is_accepted_by_a_real_kube_apiserver_dry_run"),
    r"bash scripts/install-kube-image\.sh": "test_kube_image.py (its fixture `image`)",
    r"make kube-(up|down)": "test_kube_node.py (its fixture `running_node`)",
    r"make kube-dapr": "test_kube_dapr.py (its fixture `dapr_on_node`)",
    r"make kube-(load|shell)": "test_kube_app.py (its fixture `deployed`, and every block it walks in the shell)",
    # docs/kubernetes.md's blocks marked "in make kube-shell", run there as written by test_kube_app.py's walk()
    r"kubectl (create secret|apply|rollout|port-forward) .*": "test_kube_app.py (its `walk` of the page's blocks)",
    r'curl -s "http://localhost:9411/api/v2/traces\?\S+"': (
        "test_kube_app.py::test_the_runs_traces_reach_the_demo_zipkin_on_the_node"),
    r"make serve-ha": (
        "test_ha.py::test_make_serve_ha_runs_three_hosts_on_loopback_only_and_ctrl_c_leaves_nothing_listening"),
    r"\.venv/bin/python -m pytest -m ha": "test_ha.py (the HA tests alone)",
}
# Commands run here against the service, with `<instance id>` and sample ids replaced by a real run's id.
RUN_HERE = [
    r"curl -i -X POST http://localhost:8001/run .*",
    r"curl -s http://localhost:8001/run/(\S+|<instance id>)",
    r"curl -i -X POST http://localhost:3500/v1\.0/publish/agent-pubsub/assistant\.topic .*",
    r"make workflows",
    r"make history ID=<instance id>",
    r"redis-cli .*",
]


def test_the_readme_stays_short():
    assert len(README.splitlines()) <= README_LINES_MAX, "the depth belongs in docs/, one page per topic"


def test_the_readme_shows_the_two_scripts_exactly():
    python_blocks = [body for language, body in blocks(README) if language == "python"]

    for script in ("durable_agent_minimal.py", "durable_agent_service.py"):
        assert (stack.ROOT / script).read_text() in python_blocks, f"the README's copy of {script} differs"


def test_the_readme_dapr_run_commands_are_the_ones_the_tooling_runs():
    commands = bash_commands(README)

    assert "dapr run " + " ".join(stack.MINIMAL_APP) in commands
    assert "dapr run " + " ".join(stack.SERVICE_APP) in commands


def test_every_command_in_the_readme_and_the_docs_is_run_by_the_suite():
    for page, command in all_commands():
        handled = [p for p in [*RUN_ELSEWHERE, *RUN_HERE] if re.fullmatch(p, command)]
        assert handled, f"{page}: the command {command!r} is run by no test: add it to tests/test_readme.py"
    for where in RUN_ELSEWHERE.values():
        test_file = where.split("::")[0].split(" ")[0]
        if test_file.endswith(".py"):
            assert (Path(__file__).parent / test_file).exists()
        if "::" in where:
            assert f"def {where.split('::')[1]}(" in (Path(__file__).parent / test_file).read_text()


def make_targets_named(text: str) -> set[str]:
    """`make X` in the page's inline code and bash blocks, past options and VAR=value."""
    pattern = r"\bmake\s+(?:-\w+\s+|[A-Z_]+=\S*\s+)*([a-z][a-z-]*)"
    return {target for code in [*code_spans(text), *bash_commands(text)] for target in re.findall(pattern, code)}


def test_every_make_target_the_readme_and_the_docs_mention_exists():
    targets = set(re.findall(r"^([a-z-]+):", (stack.ROOT / "Makefile").read_text(), re.M))

    mentioned = {page: make_targets_named(text) for page, text in PAGES.items()}
    assert {"run", "test", "serve", "bench", "doctor", "workflows", "history"} <= set().union(*mentioned.values())
    for page, named in mentioned.items():
        assert named - targets == set(), f"{page} mentions make targets that do not exist"


# The task of the README's POST /run and publish commands.
README_TASK = "Write a haiku about programming."


def runs_asking(redis_client, text: str) -> set[str]:
    """The instance ids of the service's runs whose conversation mentions `text`."""
    keys = redis_client.scan_iter(match=f"{SERVICE_APP_ID}||assistant:_workflow_*", count=1000)
    return {key.rsplit("_", 1)[1] for key in keys if text in (redis_client.hget(key, "data") or "")}


def test_the_readme_commands_work_against_the_running_service(service, scripted_llm, local_stack, redis_client):
    scripted_llm.claim(README_TASK)  # the runs the README's commands start are this test's
    task = scripted_llm.task("Write a haiku for the README test.")
    scripted_llm.answer_when(task, "Readme haiku")
    instance_id = service.start_run(task)
    assert service.wait_until_done(instance_id)["runtime_status"] == "COMPLETED"
    earlier_runs = runs_asking(redis_client, README_TASK)

    here = [c for _, c in all_commands() if any(re.fullmatch(p, c) for p in RUN_HERE)]
    assert len(here) >= len(RUN_HERE)  # each pattern has at least one command in the README or the docs
    for command in dict.fromkeys(here):
        concrete = re.sub(r"<instance id>|\b[0-9a-f]{32}\b", instance_id, command)
        result = subprocess.run(["bash", "-c", concrete], cwd=stack.ROOT, env=local_stack.env(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{concrete}\n{result.stdout}\n{result.stderr}"
        expected = {
            "curl -i -X POST http://localhost:8001/run": "HTTP/1.1 200 OK",
            "curl -s http://localhost:8001/run/": '"runtime_status":"COMPLETED"',
            "curl -i -X POST http://localhost:3500": "HTTP/1.1 204 No Content",
            "make workflows": instance_id,
            "make history": "executionCompleted       COMPLETED",
            "redis-cli --scan": f"assistant:_workflow_{instance_id}",
            "redis-cli HGET": "Readme haiku",
        }
        for prefix, text in expected.items():
            if concrete.startswith(prefix):
                assert text in result.stdout, f"{concrete}\n{result.stdout[:2000]}"

    # The runs that the POST /run and the publish started end here, not during a later test.
    starting_runs = [c for c in dict.fromkeys(here) if c.startswith("curl -i -X POST")]

    def readme_runs() -> set[str] | None:
        found = runs_asking(redis_client, README_TASK) - earlier_runs
        return found if len(found) >= len(starting_runs) else None

    started = wait_for(readme_runs, f"a run of each of {starting_runs}")
    assert len(started) == len(starting_runs), started
    for run in started:
        assert service.wait_until_done(run)["runtime_status"] == "COMPLETED"


def test_every_test_the_readme_and_the_docs_name_exists():
    tests = {path.name: path.read_text() for path in Path(__file__).parent.glob("test_*.py")}
    named = {page: re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+)`", text) for page, text in PAGES.items()}

    assert len(named["docs/claims.md"]) >= 25  # the claims table names a test in every row
    assert sum(len(found) for found in named.values()) >= 40  # and the docs name the tests behind their text
    for page, found in named.items():
        for test_file, name in found:
            where = [tests[test_file]] if test_file else list(tests.values())
            assert any(f"def {name}(" in text for text in where), f"{page} names {test_file}::{name}, which is no test"


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(text), re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_every_relative_link_in_the_readme_and_the_docs_leads_somewhere():
    checked = 0
    for page, text in PAGES.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
            if re.match(r"[a-z]+:", target):
                continue  # http(s) and other schemes
            path_part, _, anchor = target.partition("#")
            linked = (stack.ROOT / page).parent / path_part if path_part else stack.ROOT / page
            assert linked.exists(), f"{page} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                assert anchor in heading_anchors(linked.read_text()), f"{page} links to {target}: no such heading"
            checked += 1

    assert checked >= 30
    for page in PAGES:
        if page != "README.md":
            assert f"]({page})" in README, f"the README does not link to {page}"
