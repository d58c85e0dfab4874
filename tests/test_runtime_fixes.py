"""The runtime carries the fixes of Dapr 1.18.3 that bear on this stack (scripts/patches/).

Dapr 1.18.3 cannot be built from the Go module proxy, so we build 1.18.2 with our own patches, each the
fix of one upstream commit (scripts/patches/README.md). Each test here shows one fix at work on the
real stack; its switch-off (tools/proof/switch_off_table.py) runs it on the runtime built without the
patches (TDA_DAPR_PATCHES=none, $TDA_HOME/dapr-1.18.2), where it fails as the bug says.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from helpers import record_figure, wait_for
from tools.stack.settings import LOG_DIR, RESOURCES_DIR, SERVICE_APP_ID, SIDECAR_URL

PUBSUB = "agent-pubsub"
# How a failed read of a run's state, torn by a save in the middle, reads (pkg/runtime/wfengine/state).
TORN_READ = "declared in metadata"


PROBE_TOPIC, PROBE_ROUTE = "runtime-fixes.probe", "/runtime-fixes-probe"
# A declarative subscription: the sidecar delivers the topic's messages to the app over HTTP (POST to the
# route), the path of Dapr 1.18.2 that panicked. The service's own topic is served over a gRPC stream
# (dapr-agents subscribes so), which 1.18.2 already guards; an app of yours with a subscription like this,
# or a programmatic one (GET /dapr/subscribe), is delivered over HTTP.
HTTP_SUBSCRIPTION = f"""apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: runtime-fixes-probe
spec:
  pubsubname: {PUBSUB}
  topic: {PROBE_TOPIC}
  routes:
    default: {PROBE_ROUTE}
scopes:
  - {SERVICE_APP_ID}
"""


def _log_since_last_start(service) -> str:
    return service.log.read_text(errors="replace").rsplit("===== service start =====", 1)[-1]


def _sidecar_died(service, daprd: psutil.Process) -> str:
    """Why the sidecar is gone, from the service's log: its panic, or its last lines."""
    lines = _log_since_last_start(service).splitlines()
    panic = next((i for i, line in enumerate(lines) if line.startswith("panic:")), None)
    shown = lines[panic:panic + 4] if panic is not None else lines[-6:]
    return f"the sidecar (daprd pid {daprd.pid}) died on the message:\n" + "\n".join(shown)


def _ended(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _handled(redis_client, topic: str) -> bool:
    """Every message on `topic` has been handed out to the service's sidecar and acknowledged."""
    if not redis_client.exists(topic):
        return False
    group = next((g for g in redis_client.xinfo_groups(topic) if g["name"] == SERVICE_APP_ID), None)
    last = redis_client.xinfo_stream(topic)["last-generated-id"]
    return group is not None and group["last-delivered-id"] == last and group["pending"] == 0


@pytest.fixture
def http_subscriber(service):
    """The service with a declarative subscription to PROBE_TOPIC, removed afterwards."""
    subscription = service.resources / "runtime-fixes-probe.yaml"
    subscription.write_text(HTTP_SUBSCRIPTION)
    service.stop()
    service.start()
    try:
        yield service
    finally:
        subscription.unlink()
        service.stop()
        service.start()


def test_a_pubsub_message_with_a_numeric_traceid_does_not_crash_the_sidecar(http_subscriber, redis_client):
    # A CloudEvent names its trace in traceid/traceparent, which the publisher writes; Dapr 1.18.2's HTTP
    # delivery took a number there for a string and panicked (dapr 9d2c843687): any client allowed to
    # publish to the topic stopped the sidecar, and again after each restart (the message stays pending).
    service = http_subscriber
    event = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "another-app", "type": "com.example.probe",
             "datacontenttype": "application/json", "data": {"probe": "numeric traceid"}, "traceid": 4242}
    _, daprd = service.processes()
    try:
        response = httpx.post(f"{SIDECAR_URL}/v1.0/publish/{PUBSUB}/{PROBE_TOPIC}", content=json.dumps(event),
                              timeout=30, headers={"Content-Type": "application/cloudevents+json"})
    except httpx.TransportError:  # the delivery can be faster than the publish's answer: the sidecar died meanwhile
        wait_for(lambda: _ended(daprd), "the sidecar to end")
        raise AssertionError(_sidecar_died(service, daprd)) from None
    assert response.status_code == 204, response.text
    wait_for(lambda: not daprd.is_running() or _handled(redis_client, PROBE_TOPIC),
             "the message to be delivered and acknowledged, or the sidecar to die")
    assert daprd.is_running(), _sidecar_died(service, daprd)
    # It reached the app (which has no such route: 404, so the sidecar drops it), untraced.
    assert f"POST {PROBE_ROUTE}" in _log_since_last_start(service) or \
        "non-retriable error returned from app" in _log_since_last_start(service)
    assert httpx.get(f"{SIDECAR_URL}/v1.0/healthz", timeout=10).status_code == 204


READ_FOR_S, READERS, LATEST = 20.0, 6, 8


def test_reading_a_run_while_it_is_saved_never_fails(service, scripted_llm):
    # The sidecar reads a run's metadata, then its inbox and history rows, in two reads of the state store;
    # Dapr 1.18.2 failed a read that a save of the run cut in two (dapr 0472e09a61), and GET /run/<id>
    # answered 500 for a healthy run. For READ_FOR_S seconds runs are started one after another while
    # readers ask the sidecar's workflow API, without pause, for the state of the latest ones.
    runs: list[str] = []
    answers: dict[int, int] = {}
    torn: list[str] = []
    lock, done = threading.Lock(), threading.Event()

    def read(offset: int) -> None:
        with httpx.Client(base_url=SIDECAR_URL, timeout=30) as sidecar:
            n = offset
            while not done.is_set():
                with lock:
                    latest = runs[-LATEST:]
                if not latest:
                    continue
                response = sidecar.get(f"/v1.0/workflows/dapr/{latest[n % len(latest)]}")
                n += 1
                with lock:
                    answers[response.status_code] = answers.get(response.status_code, 0) + 1
                    if response.status_code != 200 and TORN_READ in response.text:
                        torn.append(response.text)

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(READERS)]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < READ_FOR_S:
            run = service.start_run(scripted_llm.task(f"A run read while it is saved [{len(runs)}]"))
            with lock:
                runs.append(run)
        for run in runs:
            status = service.wait_until_done(run, timeout_s=120)
            assert status["runtime_status"] == "COMPLETED", status
    finally:
        done.set()
        for reader in readers:
            reader.join(timeout=30)
    reads = sum(answers.values())
    record_figure("reads of runs while they were saved", runs=len(runs), reads=reads, torn=len(torn),
                  seconds=round(time.monotonic() - started, 1))
    assert not torn, f"{len(torn)} of {reads} reads of a run failed, torn by a save: {torn[0]}"
    assert set(answers) == {200}, f"answers to the reads: {answers}"


# tests/runtime_fixes_terminate_app.py, under its own app id, with the workflow state store only.
TERMINATE_APP = Path(__file__).with_name("runtime_fixes_terminate_app.py")
TERMINATE_APP_ID, BUSY_RUNS = "terminate-probe", 20


def test_a_terminate_sent_while_a_run_works_ends_it(local_stack, tmp_path):
    # A terminate that reaches a busy run in the same batch as an activity's result was dropped when it was
    # not the batch's last event, or when the run continued as new in that batch (durabletask-go c1b1fb8,
    # dapr b166158a91): the run went on RUNNING for good, and the terminate call never returned. The app
    # terminates BUSY_RUNS runs that continue as new after each activity, so some terminates land so.
    resources = tmp_path / "resources"
    resources.mkdir()
    shutil.copy(RESOURCES_DIR / "agent-workflow.yaml", resources)
    log = LOG_DIR / "terminate-probe.log"
    argv = ["dapr", "run", "--app-id", TERMINATE_APP_ID, "--resources-path", str(resources), "--log-level", "warn",
            "--", sys.executable, str(TERMINATE_APP), str(BUSY_RUNS)]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env=local_stack.env(), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process.poll() is None:  # `dapr run` stops its sidecar on SIGTERM
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    line = next((line for line in log.read_text(errors="replace").splitlines() if "RESULT " in line), None)
    assert line, f"the app printed no result; its log: {log}"
    result = json.loads(line.split("RESULT ", 1)[1])
    record_figure("busy runs terminated", runs=result["runs"], terminated=result["terminated"])
    assert result["terminated"] == result["runs"], (
        f"{result['runs'] - result['terminated']} of {result['runs']} runs terminated while they worked are still "
        f"not TERMINATED 30 s later: {result['not_terminated']}")
