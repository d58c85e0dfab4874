"""`make switch-offs` stays complete and true, and the durability page quotes what was measured.

The switch-off run itself takes long, so `make test` runs one switch-off for
real (in a throw-away copy, in namespaces of its own) and checks the rest
without running them: every test of the README's claims table has its
switch-off, each switch-off still applies to today's files, and the page shows
the table of the last full run and the figures the suite wrote.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tools.proof import figures, switch_offs
from tools.proof.switch_off_table import SWITCH_OFFS
from tools.stack.settings import ROOT

README = (ROOT / "README.md").read_text()


def claims_table() -> list[tuple[str, list[str]]]:
    """(claim, the tests its row names) for each row of the README's claims table."""
    lines = README.splitlines()
    start = lines.index("| claim | see it yourself | test | more |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((cells[0], re.findall(r"`(test_\w+\.py(?:::test_\w+)?)`", cells[2])))
    return rows


def test_every_test_of_the_readme_claims_table_has_a_switch_off():
    rows = claims_table()
    named = {(claim, test) for claim, tests in rows for test in tests}
    declared = {(entry.claim, entry.test) for entry in SWITCH_OFFS}

    assert len(rows) >= 25 and all(tests for _, tests in rows), "every row of the claims table names a test"
    assert named - declared == set(), "claims-table tests without a switch-off in tools/proof/switch_off_table.py"
    assert declared - named == set(), "switch-offs of claims or tests the README no longer has"
    assert [entry.test for entry in SWITCH_OFFS if not (entry.edits or entry.env or entry.none)] == []
    assert [entry.test for entry in SWITCH_OFFS if not (entry.because or entry.none)] == []


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


def test_the_durability_page_shows_the_last_full_switch_off_run():
    results = json.loads(switch_offs.RESULTS_FILE.read_text())

    assert switch_offs.page_section(results) in switch_offs.PAGE.read_text()
    assert {(row["claim"], row["test"]) for row in results["rows"]} == {(e.claim, e.test) for e in SWITCH_OFFS}
    assert [row["test"] for row in results["rows"] if row["failed"] is not True] == []


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


@pytest.mark.skipif(not switch_offs.namespaces_available(),
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
