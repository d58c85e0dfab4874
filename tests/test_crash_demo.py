"""`make crash-demo`: a run survives a SIGKILL of its app mid LLM call, on screen,
in under a minute, and the demo leaves nothing running. The test reads the
demo's LLM call log and the run's history itself: the demo's printed verdict
is what a user sees, not the proof."""

from __future__ import annotations

import json
import re
import time

import psutil

from helpers import record_figure
from tools.runs import crash_demo
from tools.runs.workflows import history, sidecar_grpc_port
from tools.stack import processes, settings
from tools.stack.scripted_llm import ScriptedLLM


def service_processes() -> list[str]:
    return [" ".join(p.info["cmdline"]) for p in psutil.process_iter(["cmdline"])
            if "durable_agent_service.py" in " ".join(p.info["cmdline"] or [])]


def test_make_crash_demo_kills_the_app_mid_llm_call_and_the_same_run_completes(service, redis_client, capsys,
                                                                              monkeypatch):
    # The demo starts a scripted LLM of its own on a free port; this keeps a handle on it, to read its call log.
    demo_llms: list[ScriptedLLM] = []

    class KeptScriptedLLM(ScriptedLLM):
        def start(self, timeout_s: float = 10.0) -> ScriptedLLM:
            demo_llms.append(self)
            return super().start(timeout_s)

    monkeypatch.setattr(crash_demo, "ScriptedLLM", KeptScriptedLLM)
    service.stop()  # the demo starts the service itself, on the same ports
    started = time.monotonic()

    exit_code = crash_demo.main()  # what `make crash-demo` runs

    took_s = time.monotonic() - started
    out, err = capsys.readouterr()
    assert exit_code == 0, out + err
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

    # What the LLM saw: the task asked twice (the call the kill cut short, then the resumed one), one summary.
    (llm,) = demo_llms
    asked = llm.calls_mentioning(crash_demo.TASK)
    assert [call.is_summary for call in asked] == [False, False, True], asked
    assert {call.answered_status for call in asked} == {200}
    # The same instance completed: ask the workflow engine, through the service, again.
    service.start()
    status = service.status(instance_id)
    assert status["runtime_status"] == "COMPLETED"
    assert json.loads(status["serialized_output"])["content"] == crash_demo.ANSWER
    # Its history holds call_llm once: the attempt the kill cut short never completed, so it wrote no event.
    events = history(instance_id, sidecar_grpc_port(settings.SERVICE_APP_ID))
    assert [e["type"] for e in events if e["name"].endswith(".call_llm")] == ["taskScheduled", "taskCompleted"]
    assert (events[-1]["type"], events[-1]["name"]) == ("executionCompleted", "COMPLETED")
    data = json.loads(redis_client.hget(f"{settings.SERVICE_APP_ID}||assistant:_workflow_{instance_id}", "data"))
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", crash_demo.TASK), ("assistant", crash_demo.ANSWER)]
    record_figure("make crash-demo (stack already up)", seconds=round(took_s, 1))
