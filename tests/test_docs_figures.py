"""No figure on the docs pages is typed by hand: each is written by the command that measures it,
and these tests fail when a page shows anything else.

- docs/benchmark.md: rendered from bench/results/latest.json (tools/bench/report.py; `make bench`
  writes both, `python -m tools.bench --page` redraws the page from the file).
- build times (docs/local-stack.md, docs/kubernetes.md): the installers record them beside their
  logs; `python -m tools.proof.figures builds` copies them into docs/figures.json.
- sample outputs (docs/doctor.md, docs/looking-inside.md, docs/kubernetes.md): the tests below run
  the commands; with TDA_WRITE_FIGURES=1 they keep the output in docs/figures.json and rewrite the
  page, and they fail when the kept sample no longer has the shape of what the command prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from helpers import env_without_llm_settings
from tools.bench import report
from tools.proof import figures
from tools.stack import settings
from tools.stack.settings import ROOT

BENCH_RESULTS = json.loads((ROOT / report.RESULTS).read_text())


def run(argv: list[str], cwd=ROOT, env: dict[str, str] | None = None, timeout_s: float = 120):
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def check_sample(name: str, output: str, varies=lambda line: False) -> None:
    """Keep the output as the sample (TDA_WRITE_FIGURES=1 only), then compare the kept sample's shape with it."""
    figures.keep_sample(name, output)
    problems = figures.sample_problems(name, output, varies)
    assert not problems, "\n".join(problems) + f"\n\nthe command printed:\n{output}"


# -- docs/benchmark.md ----------------------------------------------------------------------------
def test_the_benchmark_page_shows_what_latest_json_says():
    problems = report.page_problems(report.PAGE.read_text(), BENCH_RESULTS)
    assert not problems, "\n".join(problems)


def test_the_benchmark_check_notices_a_figure_typed_by_hand():
    page = report.PAGE.read_text()
    shown = f"p50 {BENCH_RESULTS['latency']['p50_ms']} ms"
    assert shown in page

    problems = report.page_problems(page.replace(shown, "p50 99.9 ms", 1), BENCH_RESULTS)

    assert len(problems) == 1 and "'the figures'" in problems[0], problems


# -- passages written from docs/figures.json ---------------------------------------------------------
def test_every_passage_shows_what_docs_figures_json_holds():
    problems = figures.misquoted_passages(figures.load())
    assert not problems, "\n".join(problems)


def test_the_passage_check_notices_a_typed_figure_and_a_build_of_other_versions():
    kept = figures.load()
    passage = next(p for p in figures.PASSAGES if p.name == "build: the Dapr runtime")
    page = passage.page.read_text()
    shown = f"built in {kept['figures'][passage.name]['total_s']} s"
    assert shown in page

    typed = page.replace(shown, "built in 100 s")
    stale = json.loads(json.dumps(kept))
    stale["figures"][passage.name]["what"] = "Dapr runtime 1.17.0 (slim) and CLI 1.16.5"

    assert figures.with_passage(typed, passage, kept) != typed  # what misquoted_passages compares
    assert any("not of the pinned" in problem for problem in figures.misquoted_passages(stale))


def test_the_installers_record_their_build_times_where_the_figures_command_reads_them(tmp_path, monkeypatch):
    """The record helpers both installers use (scripts/lib.sh), run as they are (its step stubbed: no build)."""
    monkeypatch.setattr(settings, "TDA_HOME", tmp_path)
    for script, name in (("install-dapr.sh", "build: the Dapr runtime"),
                         ("install-kube-check.sh", "build: the Kubernetes check")):
        assert 'start_record "$LOG"' in (ROOT / "scripts" / script).read_text()
        label = f"{figures.STEP_PREFIX[name]}building something (1/1)"
        script_text = (f"set -euo pipefail\nTDA_HOME='{tmp_path}'\n. '{ROOT}/scripts/lib.sh'\n"
                       f"step() {{ shift 2; \"$@\"; }}\n"
                       f"LOG='{tmp_path}/logs/{figures.BUILD_LOGS[name]}.log'\nmkdir -p '{tmp_path}/logs'\n"
                       f"start_record \"$LOG\"\ntimed '{label}' true\nwrite_record '{figures.BUILDS[name]}' 7\n")
        result = run(["bash", "-c", script_text])
        assert result.returncode == 0, result.stderr

        record = figures.build_from_cache(name, "a test's run")

        assert (record["what"], record["steps"], record["total_s"]) == (figures.BUILDS[name], [[label, 0]], 7)
        assert record["cores"] == os.cpu_count()
        text = " ".join(figures.render_build(record).split())
        assert "built in 7 s (something 0 s)" in text and f"{os.cpu_count()} cores" in text, text


def test_a_set_up_log_gives_the_same_record():
    log = ("[setup] runtime: downloading the Dapr 1.18.2 sources (Go module proxy) ... 1 s\n"
           "[setup] runtime: building daprd (1/5) ... 190 s\n"
           "[setup] runtime: Dapr 1.18.2 ready in /x/dapr-1.18.2 (191 s in all)\n"
           "[setup] kubernetes check: building etcd 3.6.16 (2/3) ... 22 s\n")

    record = figures.build_from_setup_log("build: the Dapr runtime", log, "a test's log")

    assert record["steps"] == [["runtime: downloading the Dapr 1.18.2 sources (Go module proxy)", 1],
                               ["runtime: building daprd (1/5)", 190]]
    assert record["total_s"] == 191
    assert figures.build_from_setup_log("build: the Kubernetes check", log, "a test's log") is None  # no total


# -- sample outputs -------------------------------------------------------------------------------
def without_go() -> str:
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(p, "go")))


def test_make_doctor_on_a_fresh_clone_prints_what_this_page_shows(tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".stack", "__pycache__", ".*_cache", "results", "images"))
    env = {k: v for k, v in env_without_llm_settings().items() if k not in ("DAPR_API_TOKEN", "TDA_STATE_DIR")}
    env["TDA_HOME"] = str(tmp_path / "empty-cache")

    # `make doctor` runs it with the system's python3 (PYTHON), before anything is installed.
    result = run([os.environ.get("PYTHON", "python3"), "-m", "tools.doctor"], cwd=clone, env=env)

    # Ports and the sidecar: what else runs on the machine decides those lines (and, through a port held
    # by another program, the exit status).
    check_sample("sample: make doctor on a fresh clone", result.stdout.replace(str(clone), str(ROOT)),
                 varies=lambda line: re.match(r"\w+ (ports? |no sidecar |the (service's )?sidecar )", line))


def test_the_troubleshooting_table_quotes_the_error_the_runtime_build_prints_without_go(tmp_path):
    page = (ROOT / "docs" / "doctor.md").read_text()

    result = run([shutil.which("bash"), "scripts/install-dapr.sh"],
                 env=os.environ | {"PATH": without_go(), "TDA_HOME": str(tmp_path)})

    assert result.returncode == 1
    assert "`[setup] error: Go is not installed`" in page
    assert result.stderr.startswith("[setup] error: Go is not installed"), result.stderr


def test_make_workflows_and_make_history_print_what_this_page_shows(service, scripted_llm):
    instance_ids = []
    for what in ("a listed run", "a run's history"):
        task = scripted_llm.task(f"Write a haiku about {what}.")
        scripted_llm.answer_when(task, "Five, seven, then five:\nthe run is listed in full,\nits history too.")
        instance_ids.append(service.start_run(task))
        assert service.wait_until_done(instance_ids[-1])["runtime_status"] == "COMPLETED"

    listed = run([sys.executable, "-m", "tools.runs.workflows", "list"])
    history = run([sys.executable, "-m", "tools.runs.workflows", "history", instance_ids[-1]])

    assert listed.returncode == 0 and history.returncode == 0, listed.stderr + history.stderr
    header, *rows = listed.stdout.splitlines()
    ours = [row for row in rows if any(instance_id in row for instance_id in instance_ids)]
    assert [instance_id for row in ours for instance_id in instance_ids if instance_id in row] == instance_ids[::-1]
    check_sample("sample: make workflows", "\n".join([header, *ours]))
    # How many `workflowStarted` events a run gets depends on how its steps batch: left out.
    check_sample("sample: make history", history.stdout, varies=lambda line: "workflowStarted" in line)


def test_make_crash_demo_prints_what_this_page_shows(service):
    service.stop()  # the demo starts the service itself, on the same ports; the next test's fixture restarts it

    result = run([sys.executable, "-m", "tools.runs.crash_demo"], timeout_s=240)

    assert result.returncode == 0, result.stdout + result.stderr
    # [stack] lines depend on what already runs; the history's rows on how the run's steps batched
    # around the kill (test_crash_demo.py checks them).
    check_sample("sample: make crash-demo", result.stdout,
                 varies=lambda line: line.startswith("[stack]") or re.match(r"-?\d+ \w+", line))


def test_the_kubernetes_check_prints_what_this_page_shows():
    result = run([sys.executable, "-m", "tools.proof.kube_check"], timeout_s=240)

    assert result.returncode == 0, result.stdout + result.stderr
    first, second, *_, last = result.stdout.splitlines()
    check_sample("sample: the Kubernetes check", "\n".join([first, second, "…", last]))


def test_the_readme_shows_the_local_model_run_that_the_results_file_holds():
    """The README's first screen quotes `make run LLM=local` as tools/bench/local_model.py measured it."""
    from tools.bench import local_model

    readme = local_model.README.read_text()
    assert local_model.render_readme() in readme, "run: python -m tools.bench.local_model doc"
    assert "(not measured yet" not in readme
