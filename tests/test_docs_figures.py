"""No figure on the docs pages is typed by hand: each is written by the command that measures it,
and these tests fail when a page shows anything else.

- docs/benchmark.md: rendered from bench/results/latest.json (tools/bench/report.py; `make bench`
  writes both, `python -m tools.bench --page` redraws the page from the file).
"""

from __future__ import annotations

import json

from tools.bench import report
from tools.stack.settings import ROOT

BENCH_RESULTS = json.loads((ROOT / report.RESULTS).read_text())


def test_the_benchmark_page_shows_what_latest_json_says():
    problems = report.page_problems(report.PAGE.read_text(), BENCH_RESULTS)
    assert not problems, "\n".join(problems)


def test_the_benchmark_check_notices_a_figure_typed_by_hand():
    page = report.PAGE.read_text()
    shown = f"p50 {BENCH_RESULTS['latency']['p50_ms']} ms"
    assert shown in page

    problems = report.page_problems(page.replace(shown, "p50 99.9 ms", 1), BENCH_RESULTS)

    assert len(problems) == 1 and "'the figures'" in problems[0], problems
