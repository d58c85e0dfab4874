"""The newcomer's tooling: `make doctor` names each problem and its fix, and
the benchmark cannot rot (its smoke mode runs here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tools.doctor.checks import check_resources
from tools.stack import settings


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.doctor"], cwd=settings.ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_doctor_names_the_file_and_line_of_a_yaml_typo(tmp_path):
    shutil.copytree(settings.RESOURCES_DIR, tmp_path / "resources")
    broken = tmp_path / "resources" / "agent-memory.yaml"
    broken.write_text(broken.read_text().replace("\nspec:", "\n spec:"))

    results = check_resources(tmp_path / "resources")

    failures = [message + " -> " + fix for status, message, fix in results if status == "FAIL"]
    assert len(failures) == 1
    assert "agent-memory.yaml line 6, column 2" in failures[0] and "indentation" in failures[0]
    assert all(status == "ok" for status, _, _ in check_resources(settings.RESOURCES_DIR))


def test_doctor_says_go_is_missing_when_the_runtime_still_has_to_be_built(tmp_path):
    no_go_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                 if not (os.path.exists(os.path.join(p, "go"))))
    result = doctor(os.environ | {"PATH": no_go_path, "TDA_HOME": str(tmp_path)})

    assert result.returncode == 1
    assert "FAIL  Go not found: the Dapr runtime build needs Go >= 1.26.5 -> install Go" in result.stdout
    assert "todo  Dapr runtime 1.18.2 and CLI 1.16.5 -> `make setup` builds them with Go" in result.stdout


def test_doctor_names_who_holds_a_port_the_stack_needs(local_stack, tmp_path):
    # Seen from a clone that did not start them, the running stack's services
    # are strangers holding the ports.
    result = doctor(os.environ | {"TDA_STATE_DIR": str(tmp_path)})

    assert result.returncode == 1
    placement = next(line for line in result.stdout.splitlines() if "50005" in line)
    assert placement.startswith("FAIL") and "placement" in placement and "pid" in placement
    redis_line = next(line for line in result.stdout.splitlines() if "6379" in line)
    assert redis_line.startswith("warn") and "reuse" in redis_line


def test_the_benchmark_runs_in_smoke_mode_and_writes_its_figures(service, tmp_path):
    service.stop()  # the benchmark starts the service itself, on the same ports
    result = subprocess.run([sys.executable, "-m", "tools.bench", "--smoke"], cwd=settings.ROOT,
                            capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads((settings.ROOT / "bench" / "results" / "smoke" / "latest.json").read_text())
    assert figures["latency"]["n"] == 5 and figures["latency"]["p50_ms"] > 0
    assert figures["cost"]["conversation_calls_per_run"] == 2.0
    assert figures["cost"]["redis_commands_per_run"] > 0
    assert {row["concurrency"] for row in figures["throughput"]["pubsub"]} == {1, 4}
    assert set(figures["breakdown"]["activities_ms"]) >= {"call_llm", "summarize"}
    assert "durable/direct" in result.stdout
    assert {(row["llm_delay_s"], row["concurrency"]) for row in figures["throughput"]["http"]} == {
        (0.0, 1), (0.0, 4), (0.2, 1), (0.2, 4)}
    for row in figures["throughput"]["http"] + figures["burst"]:
        assert row["peak_llm_calls_in_flight"] >= 1 and row["fraction_of_ceiling"] > 0
        assert row["cpu_ms_per_run"]["app"] > 0 and row["cpu_ms_per_run"]["daprd"] > 0
    assert [row["knob"] for row in figures["knobs"]] == ["lean: all of these"]
    assert (settings.ROOT / "bench" / "results" / "smoke" / "bench.png").stat().st_size > 10_000
