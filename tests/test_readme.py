"""The README cannot drift: its Python blocks are the scripts, its `dapr run`
lines are what `make run`/`make serve` run, every command in its bash
blocks is executed, here or by the test named for it, and every test it
names exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


from tools import stack

README = (stack.ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)


def readme_commands() -> list[str]:
    commands = []
    for language, body in BLOCKS:
        if language == "bash":
            for line in body.splitlines():
                command = re.sub(r"\s+#\s.*$", "", line).strip()
                if command:
                    commands.append(command)
    return commands


# Commands that need the whole session to themselves are run by these tests.
RUN_ELSEWHERE = {
    r"make run": "test_one_shot_run.py::test_make_run_prints_the_answer_of_the_configured_llm",
    r"OPENAI_BASE_URL=\S+ OPENAI_MODEL=\S+ make run": "test_one_shot_run.py::test_make_run_prints_the_answer_of_the_configured_llm",
    r"make test": "this suite",
    r"dapr run --app-id durable-agent-minimal .*": "test_one_shot_run.py (via tools.stack.MINIMAL_APP, checked below)",
    r"dapr run --app-id durable-agent-service .*": "every service test (via tools.stack.SERVICE_APP, checked below)",
}
# Commands run here against the service, with `<instance id>` and sample ids replaced by a real run's id.
RUN_HERE = [
    r"curl -i -X POST http://localhost:8001/run .*",
    r"curl -s http://localhost:8001/run/\S+",
    r"curl -i -X POST http://localhost:3500/v1\.0/publish/agent-pubsub/assistant\.topic .*",
    r"make workflows",
    r"make history ID=<instance id>",
    r"redis-cli .*",
]


def test_the_readme_shows_the_two_scripts_exactly():
    python_blocks = [body for language, body in BLOCKS if language == "python"]

    for script in ("durable_agent_minimal.py", "durable_agent_service.py"):
        assert (stack.ROOT / script).read_text() in python_blocks, f"the README's copy of {script} differs"


def test_the_readme_dapr_run_commands_are_the_ones_the_tooling_runs():
    commands = readme_commands()

    assert "dapr run " + " ".join(stack.MINIMAL_APP) in commands
    assert "dapr run " + " ".join(stack.SERVICE_APP) in commands


def test_every_readme_command_is_run_by_the_suite():
    for command in readme_commands():
        handled = [p for p in [*RUN_ELSEWHERE, *RUN_HERE] if re.fullmatch(p, command)]
        assert handled, f"the README command {command!r} is run by no test: add it to tests/test_readme.py"
    for where in RUN_ELSEWHERE.values():
        test_file = where.split("::")[0].split(" ")[0]
        if test_file.endswith(".py"):
            assert (Path(__file__).parent / test_file).exists()
        if "::" in where:
            assert f"def {where.split('::')[1]}(" in (Path(__file__).parent / test_file).read_text()


def test_every_make_target_the_readme_mentions_exists():
    targets = set(re.findall(r"^([a-z-]+):", (stack.ROOT / "Makefile").read_text(), re.M))
    mentioned = set(re.findall(r"`make ([a-z-]+)", README)) | {c.split()[1] for c in readme_commands()
                                                              if c.startswith("make ")}
    assert mentioned - targets == set()


def test_the_readme_commands_work_against_the_running_service(service, scripted_llm, local_stack):
    scripted_llm.answer_next("Readme haiku")
    instance_id = service.start_run("Write a haiku for the README test.")
    assert service.wait_until_done(instance_id)["runtime_status"] == "COMPLETED"

    for command in readme_commands():
        if not any(re.fullmatch(p, command) for p in RUN_HERE):
            continue
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


def test_every_test_the_readme_names_exists():
    tests = {path.name: path.read_text() for path in Path(__file__).parent.glob("test_*.py")}
    named = re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+)`", README)

    assert len(named) >= 25  # the claims table, and the tests named in the text
    for test_file, name in named:
        where = [tests[test_file]] if test_file else list(tests.values())
        assert any(f"def {name}(" in text for text in where), f"the README names {test_file}::{name}, which is no test"
