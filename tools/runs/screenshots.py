"""The README's pictures of a real run: its trace in Zipkin and its workflow history.

    python -m tools.runs.screenshots            # part of `make images`: every picture below
    python -m tools.runs.screenshots approval   # only images/dashboard-approval.png
    python -m tools.runs.screenshots team       # only images/dashboard-team.png

Starts the stack with Zipkin and the service answering from the scripted LLM,
makes one run through `POST /run`, then
- opens the run's trace in the local Zipkin UI in headless Chromium (Debian's
  package, driven by Playwright without downloading a browser) and saves
  images/zipkin-trace.png;
- renders `make history` of the same run to images/workflow-history.png;
- opens the run's page in `make dashboard` and saves images/dashboard-run.png;
- then runs examples/approval/refund_agent.py the same way (the scripted LLM calls its refund tool),
  opens the page of its run waiting for approval in `make dashboard APP=refund-agent` and saves
  images/dashboard-approval.png (the run is denied afterwards, so that it ends);
- then runs the service beside examples/team/poet_agent.py (the scripted LLM makes the assistant call
  the tool `Poet`, and the Poet answer with a haiku), waits for the assistant's run to complete, opens its
  page in `make dashboard` and saves images/dashboard-team.png: the parent run with its child run, each
  with the app it ran in.
Everything it starts, it stops.
"""

from __future__ import annotations

import sys
import time

import httpx

from tools.runs.workflows import history, sidecar_grpc_port
from tools.stack import commands as stack
from tools.stack import processes
from tools.stack.processes import StackError
from tools.stack.scripted_llm import ScriptedLLM, service_with_scripted_llm
from tools.stack.settings import (
    APPROVAL_APP_ID,
    DASHBOARD_PORT,
    DASHBOARD_URL,
    LOG_DIR,
    ROOT,
    SERVICE_APP_ID,
    SERVICE_URL,
    TEAM_APP_ID,
    ZIPKIN_PORT,
)

IMAGES = ROOT / "images"
CHROMIUM = "/usr/bin/chromium"
# Chromium on a closed network: no background connections, no first-run work.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def one_run() -> str:
    with httpx.Client(base_url=SERVICE_URL, timeout=30) as client:
        instance_id = client.post("/run", json={"task": "Write a haiku about programming."}).json()["instance_id"]
        deadline = time.monotonic() + 60
        while client.get(f"/run/{instance_id}").json()["runtime_status"] != "COMPLETED":
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {instance_id} did not complete")
            time.sleep(0.2)
    return instance_id


def trace_id_of(instance_id: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        traces = httpx.get(f"http://127.0.0.1:{ZIPKIN_PORT}/api/v2/traces", params={
            "serviceName": "durable-agent-service", "limit": 10,
            "annotationQuery": f"durabletask.task.instance_id={instance_id}"}).json()
        for trace in traces:
            if any(span["name"].startswith("orchestration||") for span in trace):
                return trace[0]["traceId"]
        time.sleep(0.5)
    raise RuntimeError(f"no trace of run {instance_id} in Zipkin")


def zipkin_screenshot(trace_id: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(f"http://127.0.0.1:{ZIPKIN_PORT}/zipkin/traces/{trace_id}")
        page.wait_for_selector("text=call_llm", timeout=30_000)
        page.screenshot(path=str(IMAGES / "zipkin-trace.png"))
        browser.close()


def dashboard_screenshot(instance_id: str) -> None:
    from playwright.sync_api import sync_playwright

    from tools.runs.dashboard import in_background

    with in_background("screenshots-dashboard") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(f"{url}/#/run/{instance_id}")
        page.locator(".step.activity", has_text="call_llm").locator("summary", has_text="output").click()
        page.wait_for_selector("#trace[href*='/zipkin/traces/']", timeout=30_000)
        page.screenshot(path=str(IMAGES / "dashboard-run.png"), full_page=True)
        browser.close()


APPROVAL_TASK = "Order A-2077 arrived late and cold; please refund the customer's 18.90 EUR."


def approval_screenshot() -> str:
    """images/dashboard-approval.png: the dashboard's page of a refund waiting for approval; returns the run."""
    from playwright.sync_api import sync_playwright

    from tools.runs.approval_demo import forget_refund
    from tools.runs.approvals import answer, waiting_approval
    from tools.runs.refund_app import APP_URL, RefundApp

    llm = ScriptedLLM(port=0).start()  # a port of its own: never the test suite's LLM
    llm.call_tool_when(APPROVAL_TASK, "refund", {"order_id": "A-2077", "amount": 18.9}, "Done: {tool_result}.")
    try:
        with stack.running(tracing=True) as runtime:  # Zipkin too: the page links the run's trace
            app = RefundApp(runtime, llm.client_env(), LOG_DIR / "screenshots-refund-agent.log")
            app.start()
            try:
                forget_refund("A-2077")
                instance_id = httpx.post(f"{APP_URL}/run", json={"task": APPROVAL_TASK}, timeout=30).json()[
                    "instance_id"]
                processes.wait_until(lambda: waiting_approval(instance_id, sidecar_grpc_port(APPROVAL_APP_ID)),
                                     f"run {instance_id} to wait for an approval")
                processes.require_free({"dashboard": DASHBOARD_PORT})
                name = "screenshots-dashboard-approval"
                dashboard = processes.spawn(name, [sys.executable, "-m", "tools.runs.dashboard",
                                                   "--app-id", APPROVAL_APP_ID])
                try:
                    processes.wait_until(lambda: processes.http_ok(f"{DASHBOARD_URL}/"), "make dashboard",
                                         process=dashboard, log=LOG_DIR / f"{name}.log")
                    with sync_playwright() as playwright:
                        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                        page = browser.new_page(viewport={"width": 1300, "height": 900})
                        page.goto(f"{DASHBOARD_URL}/#/run/{instance_id}")
                        page.wait_for_selector("#approval-box:not([hidden]) #approve", timeout=30_000)
                        page.wait_for_selector("#approval:has-text('s left')", timeout=30_000)
                        page.screenshot(path=str(IMAGES / "dashboard-approval.png"), full_page=True)
                        browser.close()
                finally:
                    processes.stop(name)
                answer(instance_id, False, sidecar_grpc_port(APPROVAL_APP_ID), reason="denied after the screenshot")
            finally:
                app.stop()
    finally:
        llm.stop()
    return instance_id


TEAM_TASK = "Ask the Poet for a haiku about durable workflows."
TEAM_POET_TASK = "Write a haiku about durable workflows."
TEAM_HAIKU = "One run asks another;\nthe child answers in its app,\nthe parent goes on."


def team_screenshot() -> str:
    """images/dashboard-team.png: the dashboard's page of an assistant's run that delegated to the Poet,
    with its child run in the Poet's app; returns the parent run."""
    from playwright.sync_api import sync_playwright

    from tools.runs.dashboard import in_background
    from tools.runs.team_app import POET, PoetApp
    from tools.runs.workflows import finished_status
    from tools.stack.llm import choose_llm

    llm = ScriptedLLM(port=0).start()  # a port of its own: never the test suite's LLM
    llm.call_tool_when(TEAM_TASK, POET, {"task": TEAM_POET_TASK}, "Here is the Poet's haiku: {tool_result}")
    llm.answer_when(TEAM_POET_TASK, TEAM_HAIKU)
    service_log = LOG_DIR / "screenshots-team-service.log"
    try:
        with stack.running(tracing=True) as runtime:  # Zipkin too: the page links the run's trace
            env = llm.client_env()
            argv, service_env = stack.dapr_run(runtime, stack.SERVICE_APP, choose_llm(env), base_env=env)
            poet = PoetApp(runtime, env, LOG_DIR / "screenshots-team-poet.log")
            try:
                stack.start_service(argv, service_env, service_log)
                poet.start()
                with httpx.Client(base_url=SERVICE_URL, timeout=30) as client:
                    response = client.post("/run", json={"task": TEAM_TASK})
                    response.raise_for_status()
                    instance_id = response.json()["instance_id"]
                    status = finished_status(client, instance_id, 120, service_log)
                if status["runtime_status"] != "COMPLETED":
                    raise StackError(f"run {instance_id} ended {status['runtime_status']}: "
                                     f"{status.get('failure_details')}")
                trace_id_of(instance_id)  # in Zipkin before the page asks for it: the page links it
                with in_background("screenshots-dashboard-team") as url, sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    page = browser.new_page(viewport={"width": 1300, "height": 900})
                    page.goto(f"{url}/#/run/{instance_id}")
                    page.wait_for_selector(f"#family-box:not([hidden]) a:has-text('in app {TEAM_APP_ID}')",
                                           timeout=30_000)
                    page.wait_for_selector(f"#app:has-text('app {SERVICE_APP_ID}')", timeout=30_000)
                    page.wait_for_selector("#trace[href*='/zipkin/traces/']", timeout=30_000)
                    page.screenshot(path=str(IMAGES / "dashboard-team.png"), full_page=True)
                    browser.close()
            finally:
                poet.stop()
                processes.stop_dapr_run("service")
    finally:
        llm.stop()
    return instance_id


def history_picture(instance_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = history(instance_id, sidecar_grpc_port("durable-agent-service"))
    lines = [f"$ make history ID={instance_id}", f"{'ID':>4}  {'TYPE':<20} {'NAME':<44} {'ELAPSED':>10}"]
    lines += [f"{r['event_id']:>4}  {r['type']:<20} {r['name']:<44} {r['elapsed_ms']:>8.1f}ms" for r in rows]
    fig = plt.figure(figsize=(8.2, 0.18 * len(lines) + 0.3))
    fig.patch.set_facecolor("#1e1e1e")
    fig.text(0.01, 0.98, "\n".join(lines), family="monospace", fontsize=9, color="#e6e6e6", va="top")
    fig.savefig(IMAGES / "workflow-history.png", dpi=110, facecolor=fig.get_facecolor())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["approval"], ["team"]):
        print("usage: python -m tools.runs.screenshots [approval | team]", file=sys.stderr)
        return 2
    if not (ROOT / ".venv" / "bin" / "python").exists():
        print("error: run `make setup` first", file=sys.stderr)
        return 1
    try:
        if not args:
            with service_with_scripted_llm(tracing=True, log_name="screenshots-service"):
                instance_id = one_run()
                history_picture(instance_id)
                zipkin_screenshot(trace_id_of(instance_id))
                dashboard_screenshot(instance_id)
            print(f"[images] wrote images/zipkin-trace.png, images/workflow-history.png and images/dashboard-run.png "
                  f"for run {instance_id}")
        if args != ["team"]:
            waiting_id = approval_screenshot()
            print(f"[images] wrote images/dashboard-approval.png for run {waiting_id}, waiting for approval "
                  "(then denied)")
        if args != ["approval"]:
            parent_id = team_screenshot()
            print(f"[images] wrote images/dashboard-team.png for run {parent_id} of {SERVICE_APP_ID} and its child "
                  f"in {TEAM_APP_ID}")
    except StackError as exc:
        print(f"[images] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
