"""`dapr run -f tiny-durable-agent.yaml`, the README's multi-app run file: the
command as a user types it (with the stack up, `eval "$(make -s env)"` and
an LLM exported), started from the repository; a run over `POST /run` on
8001 completes, and stopping it leaves nothing of it running."""

from __future__ import annotations

import json

import httpx
import yaml

from helpers import processes_mentioning, wait_for
from tools.stack import commands as stack
from tools.stack import processes, settings

RUN_FILE = settings.ROOT / "tiny-durable-agent.yaml"


def _finished_run(instance_id: str) -> dict | None:
    response = httpx.get(f"{settings.SERVICE_URL}/run/{instance_id}", timeout=30)
    # 500: known, a status read while the run's state is half written in Redis (helpers.Service.wait_until_done).
    status = response.json() if response.status_code == 200 else {}
    return status if status.get("runtime_status") in ("COMPLETED", "FAILED", "TERMINATED") else None


def test_dapr_run_f_starts_the_service_and_a_post_run_on_8001_completes(local_stack, scripted_llm):
    (app,) = yaml.safe_load(RUN_FILE.read_text())["apps"]
    assert (app["appID"], app["appPort"]) == (settings.SERVICE_APP_ID, settings.APP_PORT)
    # The file loads ./resources, the OpenAI set; its conversation.openai component names no endpoint,
    # so the sidecar's OpenAI client takes OPENAI_BASE_URL from its environment: the scripted LLM.
    env = local_stack.env(scripted_llm.client_env())
    processes.stop_dapr_run("service")  # the session's service holds the ports; the `service` fixture restarts it
    log = settings.LOG_DIR / "run-file.log"
    run_file = processes.spawn("run-file", ["dapr", "run", "-f", RUN_FILE.name], env=env, cwd=settings.ROOT, log=log)
    try:
        processes.wait_until(lambda: stack.service_ready(env), "dapr run -f tiny-durable-agent.yaml",
                             process=run_file, log=log)
        task = scripted_llm.task("Write a haiku about run files")
        scripted_llm.answer_when(task, "One file starts them all")
        response = httpx.post(f"{settings.SERVICE_URL}/run", json={"task": task}, timeout=30)
        assert response.status_code == 200, response.text
        status = wait_for(lambda: _finished_run(response.json()["instance_id"]), "the run to finish")
        assert status["runtime_status"] == "COMPLETED", status
        assert json.loads(status["serialized_output"])["content"] == "One file starts them all"
        assert [call.is_summary for call in scripted_llm.calls_mentioning(task)] == [False, True]
    finally:
        processes.stop_dapr_run("run-file")

    assert [port for port in settings.SERVICE_PORTS.values() if processes.port_in_use(port)] == []
    assert processes_mentioning("durable_agent_service.py", settings.SERVICE_APP_ID) == []
