"""The README's pictures of a real run: its trace in Zipkin and its workflow history.

    python -m tools.runs.screenshots      # part of `make images`

Starts the stack with Zipkin and the service answering from the scripted LLM,
makes one run through `POST /run`, then
- opens the run's trace in the local Zipkin UI in headless Chromium (Debian's
  package, driven by Playwright without downloading a browser) and saves
  images/zipkin-trace.png;
- renders `make history` of the same run to images/workflow-history.png;
- opens the run's page in `make dashboard` and saves images/dashboard-run.png.
Everything it starts, it stops.
"""

from __future__ import annotations

import sys
import time

import httpx

from tools.runs.workflows import history, sidecar_grpc_port
from tools.stack.processes import StackError
from tools.stack.scripted_llm import service_with_scripted_llm
from tools.stack.settings import ROOT, SERVICE_URL, ZIPKIN_PORT

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


def main() -> int:
    if not (ROOT / ".venv" / "bin" / "python").exists():
        print("error: run `make setup` first", file=sys.stderr)
        return 1
    try:
        with service_with_scripted_llm(tracing=True, log_name="screenshots-service"):
            instance_id = one_run()
            history_picture(instance_id)
            zipkin_screenshot(trace_id_of(instance_id))
            dashboard_screenshot(instance_id)
    except StackError as exc:
        print(f"[images] error: {exc}", file=sys.stderr)
        return 1
    print(f"[images] wrote images/zipkin-trace.png, images/workflow-history.png and images/dashboard-run.png "
          f"for run {instance_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
