"""`make switch-offs` stays complete and true, and the pages quote what was measured.

The switch-off run itself takes long, so `make test` runs one switch-off for
real (in a throw-away copy, in namespaces of its own) and checks the rest
without running them: every test of the claims table (docs/claims.md) has its
switch-off, each switch-off still applies to today's files, each row of
docs/switch-offs.json was run on today's version of the files its proof
depends on, and the claims page shows that table; the durability and HA pages
show the figures the suite wrote.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys

import pytest

from tools.proof import figures, switch_offs
from tools.proof.switch_off_table import SWITCH_OFFS
from tools.stack import namespaces
from tools.stack.settings import ROOT

CLAIMS_PAGE = ROOT / "docs" / "claims.md"


def claims_table() -> list[tuple[str, list[str]]]:
    """(claim, the tests its row names) for each row of the claims table of docs/claims.md."""
    lines = CLAIMS_PAGE.read_text().splitlines()
    start = lines.index("| claim | see it yourself | test | more |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((cells[0], re.findall(r"`(test_\w+\.py(?:::test_\w+)?)`", cells[2])))
    return rows


def test_every_test_of_the_claims_table_has_a_switch_off():
    rows = claims_table()
    named = {(claim, test) for claim, tests in rows for test in tests}
    declared = {(entry.claim, entry.test) for entry in SWITCH_OFFS}

    assert len(rows) >= 25 and all(tests for _, tests in rows), "every row of the claims table names a test"
    assert named - declared == set(), "claims-table tests without a switch-off in tools/proof/switch_off_table.py"
    assert declared - named == set(), "switch-offs of claims or tests the claims table no longer has"
    assert [entry.test for entry in SWITCH_OFFS if not (entry.edits or entry.env or entry.none)] == []
    assert [entry.test for entry in SWITCH_OFFS if not (entry.because or entry.none)] == []


def test_every_file_a_switch_off_covers_exists():
    created = {edit.file for entry in SWITCH_OFFS for edit in entry.edits if edit.old is None}
    for entry in SWITCH_OFFS:
        files, _ = switch_offs.proof_files(entry)
        assert [name for name in files if name not in created and not (ROOT / name).is_file()] == [], entry.test


def test_every_switch_off_row_was_run_on_todays_files():
    results = json.loads(switch_offs.RESULTS_FILE.read_text())

    stale = switch_offs.stale_rows(results["rows"])
    if stale:
        pytest.fail(switch_offs.stale_message(stale), pytrace=False)


def test_a_row_goes_stale_when_any_file_its_proof_covers_changes_and_the_message_says_how_to_rerun_it(tmp_path):
    entry = next(e for e in SWITCH_OFFS if any(edit.old is not None for edit in e.edits))
    files, _ = switch_offs.proof_files(entry)
    for name in [*files, "README.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    _, sha256 = switch_offs.proof_files(entry, tmp_path)
    row = {"claim": entry.claim, "test": entry.test, "switch_off": entry.what, "commit": "0" * 40,
           "uncommitted_edits": False,
           "files_sha256": sha256, "finished": "2026-12-03T00:00:00+00:00"}
    rerun = f'make switch-offs ONLY="{entry.test.split("::")[-1]}"'
    other = next(e for e in SWITCH_OFFS if e.test != entry.test)

    assert switch_offs.stale_rows([row], [entry], tmp_path) == {}
    with (tmp_path / "README.md").open("a") as readme:  # not a file of this row's proof
        readme.write("\nedited\n")
    assert switch_offs.stale_rows([row], [entry], tmp_path) == {}
    for name in files:
        original = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(original + b"\n# edited\n")
        stale = switch_offs.stale_rows([row], [entry], tmp_path)
        assert list(stale) == [switch_offs.entry_key(entry)], name
        message = switch_offs.stale_message(stale, [entry, other])  # one of two rows stale: just that one again
        assert entry.test in message and rerun in message, message
        (tmp_path / name).write_bytes(original)
    assert switch_offs.stale_rows([{k: v for k, v in row.items() if k != "files_sha256"}], [entry], tmp_path)
    changed_reason = dataclasses.replace(entry, because=entry.because + "|another reason")
    assert switch_offs.stale_rows([row], [changed_reason], tmp_path)  # the switch-off itself changed


def test_make_switch_offs_with_only_runs_just_those_switch_offs_and_merges_their_rows():
    dry_run = subprocess.run(["make", "-n", "switch-offs", "ONLY=test_a test_b"], cwd=ROOT, capture_output=True,
                             text=True, check=True)

    assert "-m tools.proof.switch_offs --only test_a test_b --merge" in dry_run.stdout


def test_every_switch_off_still_applies_to_the_files_of_this_clone():
    for entry in SWITCH_OFFS:
        changed = switch_offs.switched_off(entry, lambda path: (ROOT / path).read_text())
        for path, text in changed.items():
            assert not (ROOT / path).exists() or (ROOT / path).read_text() != text, (entry.test, path)


def _report(tmp_path, *cases: str):
    report = tmp_path / "report.xml"
    report.write_text(f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>")
    return switch_offs.outcomes(report)


def test_a_test_that_passes_or_fails_for_another_reason_with_its_capability_off_counts_against_it(tmp_path):
    failed = '<testcase name="test_a"><failure message="assert 200 == 403">...</failure></testcase>'
    passed = '<testcase name="test_b"/>'
    skipped = '<testcase name="test_c"><skipped message="needs root"/></testcase>'
    slow = '<testcase name="test_d"><error message="failed on setup: zipkin not ready after 60 s"/></testcase>'
    because = r"200 == 403"

    assert switch_offs.verdict(_report(tmp_path, failed), because) == (True, "1 of 1 failed: assert 200 == 403")
    assert switch_offs.verdict(_report(tmp_path, failed), r"\.\.\.") == (True, "1 of 1 failed: ...")
    assert switch_offs.verdict(_report(tmp_path, failed, passed), because)[0] is False
    assert switch_offs.verdict(_report(tmp_path, skipped), because)[0] is False
    assert switch_offs.verdict(_report(tmp_path, slow), because)[0] is False
    assert switch_offs.verdict(_report(tmp_path, failed, slow), because)[0] is False
    assert switch_offs.verdict([], because)[0] is False
    # A corpus of cases fails as it should when some of them fail for the reason given, and none for another.
    assert switch_offs.verdict(_report(tmp_path, failed, passed), because, every_case=False)[0] is True
    assert switch_offs.verdict(_report(tmp_path, failed, passed, slow), because, every_case=False)[0] is False
    assert switch_offs.verdict(_report(tmp_path, passed), because, every_case=False)[0] is False
    # A test that failed for the reason given, then errored at teardown over what it left behind: judged on
    # its failure. A teardown error alone, or a setup error, still counts against it.
    torn = ('<testcase name="test_a"><error message="failed on teardown with &quot;runs reached the LLM&quot;"/>'
            '</testcase>')
    assert switch_offs.verdict(_report(tmp_path, failed, torn), because)[0] is True
    assert switch_offs.verdict(_report(tmp_path, torn), because)[0] is False


def test_the_claims_page_shows_the_switch_off_rows():
    results = json.loads(switch_offs.RESULTS_FILE.read_text())

    assert switch_offs.page_section(results) in switch_offs.PAGE.read_text()
    assert sorted(map(switch_offs.row_key, results["rows"])) == sorted(map(switch_offs.entry_key, SWITCH_OFFS))
    # Every row failed as it should, but a measurement's (its `none` says why it has no switch-off).
    assert [row["test"] for row in results["rows"] if row["failed"] is not True and row["failed"] is not None] == []
    assert all(row["switch_off"].startswith("none: ") for row in results["rows"] if row["failed"] is None)


def test_the_durability_page_quotes_the_figures_the_suite_wrote():
    assert figures.misquoted(figures.PAGE.read_text(), figures.load()) == []


def test_the_ha_page_shows_the_figures_the_suite_wrote():
    assert figures.misquoted_blocks(figures.load()) == []


def test_the_figures_check_notices_a_figure_typed_by_hand():
    page = figures.PAGE.read_text()
    kept = figures.load()
    measured = figures.render(figures.TABLE_QUOTES["the app is killed"][1], kept["figures"]["killed app mid LLM call"])

    assert figures.misquoted(page.replace(measured, "1.0 s from kill to COMPLETED, restart included"), kept)
    block = figures.BLOCKS[0]
    table = figures.block_table(block, kept)
    typed = figures.with_block(block.page.read_text(), block, kept).replace(table, table.replace("|", "| 1.0 |", 1))
    assert figures.with_block(typed, block, kept) != typed  # what misquoted_blocks compares


@pytest.mark.skipif(not namespaces.available(),
                    reason="the copy needs a network namespace of its own (root and `unshare`): the suite's stack "
                           "holds the normal ports")
def test_a_switch_off_in_a_throw_away_copy_makes_its_test_fail_and_leaves_this_clone_alone():
    service_script = (ROOT / "durable_agent_service.py").read_text()

    result = subprocess.run([sys.executable, "-m", "tools.proof.switch_offs", "--only",
                             "test_status_of_an_unknown_instance_is_404", "--no-write"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_status_of_an_unknown_instance_is_404: failed, as it should" in result.stdout
    assert "{'detail': 'Not Found'}" in result.stdout  # it failed because the route was gone
    assert (ROOT / "durable_agent_service.py").read_text() == service_script
