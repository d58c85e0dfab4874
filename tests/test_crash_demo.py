"""`make crash-demo`: a run survives a SIGKILL of its app mid LLM call, on screen,
in under a minute, and the demo leaves nothing running."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import psutil

from helpers import record_figure
from tools.runs import crash_demo
from tools.stack import processes, settings


def service_processes() -> list[str]:
    return [" ".join(p.info["cmdline"]) for p in psutil.process_iter(["cmdline"])
            if "durable_agent_service.py" in " ".join(p.info["cmdline"] or [])]


def test_make_crash_demo_kills_the_app_mid_llm_call_and_the_same_run_completes(service, redis_client):
    service.stop()  # the demo starts the service itself, on the same ports
    started = time.monotonic()

    result = subprocess.run([sys.executable, "-m", "tools.runs.crash_demo"], cwd=settings.ROOT,
                            capture_output=True, text=True, timeout=240)

    took_s = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    instance_id = re.search(r"run ([0-9a-f]{32}) started", out).group(1)
    # Each step is printed as it happens, in this order.
    steps = ["SIGKILL to the app", "starting the service again", f"run {instance_id} COMPLETED",
             "LLM calls for this task: 2", "the task and the answer once", f"/#/run/{instance_id}"]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), out
    assert took_s < 60, f"the demo took {took_s:.0f} s"
    # It leaves nothing running, and the stack it found running is still up.
    assert [port for port in settings.SERVICE_PORTS.values() if processes.port_in_use(port)] == []
    assert service_processes() == []
    assert all(processes.recorded(name) for name in ("redis", "placement", "scheduler"))
    # The same instance completed: ask the workflow engine, through the service, again.
    service.start()
    status = service.status(instance_id)
    assert status["runtime_status"] == "COMPLETED"
    assert json.loads(status["serialized_output"])["content"] == crash_demo.ANSWER
    data = json.loads(redis_client.hget(f"{settings.SERVICE_APP_ID}||assistant:_workflow_{instance_id}", "data"))
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", crash_demo.TASK), ("assistant", crash_demo.ANSWER)]
    record_figure("make crash-demo (stack already up)", seconds=round(took_s, 1))
