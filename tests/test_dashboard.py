"""`make dashboard` in a real browser: Debian's Chromium driven by Playwright
(no browser download), against the session's service and its real sidecar.

The dashboard runs as `make dashboard` runs it (`python -m tools.runs.dashboard`),
on its own port, for this module."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import wait_for
from tools.runs.dashboard import in_background
from tools.runs.screenshots import CHROMIUM, CHROMIUM_ARGS
from tools.stack.settings import ROOT, SERVICE_APP_ID

ACTIVITIES = ["record_initial_entry", "load_tools", "call_llm", "summarize", "finalize_workflow"]
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def dashboard(local_stack):
    with in_background() as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}. Install it with `bash scripts/install-browser.sh` "
                    "(it runs `apt-get install -y chromium`; Playwright downloads no browser of its own).")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not in .venv: run `make setup` (requirements-dev.txt pins it).")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Tab:
    """A browser tab on the dashboard, and every error its console reported."""

    page: object
    url: str
    errors: list[str] = field(default_factory=list)

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.url}/{fragment}")

    def row(self, instance_id: str):
        return self.page.locator(f"tr[data-id='{instance_id}']")

    def status_of(self, instance_id: str):
        return self.row(instance_id).locator("td.status")


@pytest.fixture
def tab(browser, dashboard):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    opened = Tab(page, dashboard)
    page.on("console", lambda message: opened.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.on("dialog", lambda dialog: dialog.accept())  # the confirm() of terminate and purge
    yield opened
    context.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=UI_TIMEOUT_MS)
    return playwright_expect(locator)


def completed_run(service, scripted_llm, what: str) -> tuple[str, str, str]:
    task, answer = scripted_llm.task(what), f"An answer for {what}"
    scripted_llm.answer_when(task, answer)
    instance_id = service.start_run(task)
    assert service.wait_until_done(instance_id)["runtime_status"] == "COMPLETED"
    return instance_id, task, answer


def held_run(service, scripted_llm, what: str) -> str:
    """A run whose LLM call is in flight and held until scripted_llm.release()."""
    task = scripted_llm.task(what)
    scripted_llm.hold()
    instance_id = service.start_run(task)
    wait_for(lambda: scripted_llm.calls_mentioning(task), "the run's LLM call", timeout_s=30)
    return instance_id


def test_a_running_run_shows_as_running_and_turns_completed_without_a_reload(service, scripted_llm, tab):
    try:
        instance_id = held_run(service, scripted_llm, "Held while the page watches")
        tab.open()
        expect(tab.status_of(instance_id)).to_have_text("RUNNING")
        tab.page.evaluate("window.sameDocument = true")  # gone if the page reloads

        scripted_llm.release()

        expect(tab.status_of(instance_id)).to_have_text("COMPLETED")
    finally:
        scripted_llm.release()
    assert tab.page.evaluate("window.sameDocument") is True
    assert tab.errors == []


def test_a_runs_page_shows_its_task_its_answer_its_activities_in_order_and_its_memory(service, scripted_llm, tab):
    instance_id, task, answer = completed_run(service, scripted_llm, "Shown on its own page")

    tab.open(f"#/run/{instance_id}")

    page = tab.page
    expect(page.locator("#run-status")).to_have_text("COMPLETED")
    assert page.locator("#task").inner_text() == task
    assert page.locator("#answer").inner_text() == answer
    activities = page.locator(".step.activity")
    assert [name.split(".")[-1] for name in activities.locator(".name").all_inner_texts()] == ACTIVITIES
    assert activities.locator(".badge").all_inner_texts() == ["completed"] * len(ACTIVITIES)
    call_llm = activities.nth(ACTIVITIES.index("call_llm"))
    call_llm.locator("summary", has_text="input").click()
    call_llm.locator("summary", has_text="output").click()
    expect(call_llm.locator("details[open] pre").first).to_contain_text(task)
    expect(call_llm.locator("details[open] pre").last).to_contain_text(answer)
    conversation = page.locator("#conversation li")
    assert [(li.get_attribute("data-role"), li.locator(".content").inner_text()) for li in conversation.all()][-2:] == [
        ("user", task), ("assistant", answer)]
    expect(page.locator("#memory li")).to_contain_text([f"The user asked: {task}"])
    # The trace link leads to the run's own trace once Zipkin has it (the page refreshes only live runs).
    def trace_link() -> bool:
        page.reload()
        expect(page.locator("#run-status")).to_have_text("COMPLETED")
        return bool(re.search(r"/zipkin/traces/[0-9a-f]{16,32}$", page.locator("#trace").get_attribute("href")))

    wait_for(trace_link, "the link to the run's trace in Zipkin", timeout_s=30, interval_s=1)
    assert tab.errors == []


def test_terminate_stops_a_running_run(service, scripted_llm, tab):
    try:
        instance_id = held_run(service, scripted_llm, "Terminated from the page")
        tab.open(f"#/run/{instance_id}")
        expect(tab.page.locator("#run-status")).to_have_text("RUNNING")

        tab.page.locator("#terminate").click()

        expect(tab.page.locator("#run-status")).to_have_text("TERMINATED")
    finally:
        scripted_llm.release()
    assert service.status(instance_id)["runtime_status"] == "TERMINATED"
    assert tab.errors == []


def test_purge_removes_a_finished_run_its_history_and_its_conversation(service, scripted_llm, tab, redis_client):
    instance_id, _, _ = completed_run(service, scripted_llm, "Purged from the page")
    tab.open(f"#/run/{instance_id}")
    expect(tab.page.locator("#run-status")).to_have_text("COMPLETED")

    tab.page.locator("#purge").click()

    expect(tab.page.locator("#list-view")).to_be_visible()
    expect(tab.row(instance_id)).to_have_count(0)
    assert service.http.get(f"/run/{instance_id}").status_code == 404
    assert list(redis_client.scan_iter(match=f"*{instance_id}*", count=1000)) == []
    assert tab.errors == []


def test_make_workflows_prints_the_columns_of_the_list(service, scripted_llm):
    instance_id, _, _ = completed_run(service, scripted_llm, "Listed in the terminal")

    listed = subprocess.run([sys.executable, "-m", "tools.runs.workflows", "list"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)

    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["WORKFLOW", "STATUS", "INSTANCE", "ID", "APP", "ID", "CREATED", "(UTC)", "LAST",
                              "UPDATED", "(UTC)", "DURATION"]
    date = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert any(re.fullmatch(rf"dapr\.agents\.Assistant\.workflow\s+COMPLETED\s+{instance_id}\s+{SERVICE_APP_ID}\s+"
                            rf"{date}\s+{date}\s+\d+\.\d s", row) for row in rows), listed.stdout
    created = [row.split()[4] + " " + row.split()[5] for row in rows]
    assert created == sorted(created, reverse=True)  # newest first


def test_the_list_shows_failed_and_completed_runs_with_their_status_and_filters_by_it(service, scripted_llm, tab):
    failing = scripted_llm.task("Every LLM call fails")
    scripted_llm.fail_next(*[500] * 20)  # more than the sidecar's and the agent's retries together
    failed_id = service.start_run(failing)
    assert service.wait_until_done(failed_id, timeout_s=120)["runtime_status"] == "FAILED"
    scripted_llm.reset()
    # The failures opened the LLM circuit breaker (30 s): runs fail fast until it closes again.
    completed_id = wait_for(lambda: _completed_run_or_none(service, scripted_llm), "the LLM circuit to close again",
                            timeout_s=150, interval_s=1)

    tab.open()

    expect(tab.status_of(failed_id)).to_have_text("FAILED")
    expect(tab.status_of(completed_id)).to_have_text("COMPLETED")
    tab.page.locator("#filters button[data-status='FAILED']").click()
    expect(tab.status_of(failed_id)).to_have_text("FAILED")
    expect(tab.row(completed_id)).to_have_count(0)
    assert set(tab.page.locator("td.status").all_inner_texts()) == {"FAILED"}
    tab.page.locator("#filters button[data-status='COMPLETED']").click()
    expect(tab.status_of(completed_id)).to_have_text("COMPLETED")
    expect(tab.row(failed_id)).to_have_count(0)
    tab.open(f"#/run/{failed_id}")
    expect(tab.page.locator("#failure")).to_contain_text("failed conversing with component llm-provider")
    assert tab.errors == []


def _completed_run_or_none(service, scripted_llm) -> str | None:
    task = scripted_llm.task("Is the LLM back?")
    instance_id = service.start_run(task)
    return instance_id if service.wait_until_done(instance_id, timeout_s=90)["runtime_status"] == "COMPLETED" else None
