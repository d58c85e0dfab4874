"""The service's manifests on a real Kubernetes node, walked as docs/kubernetes.md says, and faults there.

The node of `make kube-up`, Dapr 1.18.2 by its own chart (`make kube-dapr`, HA), the images the manifests
name (`make kube-load`); then the `bash` blocks of docs/kubernetes.md's "Deploying it", as written, in the
shell of `make kube-shell`: the Secrets, `kubectl apply -f deploy/kubernetes/manifests/`, the LLM pointed at
the scripted server (which listens in the node's network namespace), a run through a port-forward, a
publish, the traces in the demo Zipkin. Then pods are deleted under runs: the app's, mid LLM call; a
placement server's and a scheduler server's, under a steady load. Every acknowledged run must complete."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from helpers import percentile, record_figure, wait_for
from tools.kube import app, dapr, node
from tools.proof import figures
from tools.stack.scripted_llm import DEFAULT_ANSWER, ScriptedLLM
from tools.stack.settings import ROOT

PAGE = ROOT / "docs" / "kubernetes.md"
BLOCKS = dict(re.findall(r"<!-- in make kube-shell: ([\w-]+) -->\n```bash\n(.*?)^```", PAGE.read_text(), re.S | re.M))
PORT_FORWARD = re.compile(r"^kubectl port-forward \S+ (\d+):\d+ &$", re.M)
LLM_KEY = "sk-scripted-not-a-real-key"
README_TASK = "Write a haiku about programming."
KUBE_ANSWER = "Pods fall and rise again,\nthe sidecar keeps the thread,\nthe haiku arrives."


def make(target: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", target], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def kubectl(*args: str) -> str:
    result = node.kubectl(*args, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def as_walked(block: str) -> str:
    """The block as the test types it: after each `kubectl port-forward ... &`, a bounded wait until its local
    port listens (a person typing the next line never sees it still starting)."""
    return PORT_FORWARD.sub(lambda m: f"{m.group(0)}\ntimeout 60 bash -c 'until (: </dev/tcp/127.0.0.1/{m.group(1)}) "
                                      f"2>/dev/null; do sleep 0.2; done'", block)


def walk(*names: str, instance_id: str = "") -> subprocess.CompletedProcess:
    """The page's blocks `names` (or a line of one), one after the other in one shell of `make kube-shell`."""
    script = "\n".join(as_walked(BLOCKS.get(name, name)) for name in names).replace("<instance id>", instance_id)
    result = app.shell(f"export OPENAI_API_KEY={LLM_KEY}\n{script}", timeout=900)
    assert result.returncode == 0, f"{script}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@dataclass
class Deployed:
    llm: ScriptedLLM
    walked: str
    pod_deleted: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def deployed():
    """Node, Dapr, images; the scripted LLM; the page's secrets, apply and LLM blocks. `make kube-down` after."""
    up = make("kube-up", timeout=1800)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for target in ("kube-dapr", "kube-load"):
            done = make(target, timeout=1800)
            assert done.returncode == 0, done.stdout + done.stderr
        with app.scripted_llm_on_node() as llm:
            llm.answer_when(README_TASK, KUBE_ANSWER)
            try:
                walked = walk("secrets", "apply", "llm-on-this-node")
            except BaseException:
                print(node.kubectl("get", "pods", "-A", "-o", "wide").stdout)
                print(node.kubectl("logs", "deployment/durable-agent-service", "-c", "daprd", "--tail=40").stdout)
                raise
            yield Deployed(llm, walked.stdout)
    finally:
        down = make("kube-down", timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        left = node.left_running()
        assert left == [], left
        assert not Path(f"/run/netns/{node.NETNS}").exists()


# --- reaching the app from the test: a port-forward in the node's namespace --------------------
def pods(selector: str, namespace: str = "default") -> list[dict]:
    return json.loads(kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json"))["items"]


def ready(pod: dict) -> bool:
    return pod["metadata"].get("deletionTimestamp") is None and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def app_pod(other_than: str = "") -> str | None:
    names = [p["metadata"]["name"] for p in pods("app=durable-agent-service") if ready(p)]
    return next((name for name in names if name != other_than), None)


def listening(port: int) -> bool:
    def connect() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False
    return node.in_node_network(connect)


@contextlib.contextmanager
def port_forward(target: str, local: int, remote: int):
    process = subprocess.Popen(node.in_netns([str(node.NODE_BIN / "kubectl"), "--kubeconfig",
                                              str(node.STATE / "admin.kubeconfig"), "port-forward", target,
                                              f"{local}:{remote}"]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: listening(local), f"kubectl port-forward {target} listening on {local}", timeout_s=60)
        yield f"http://127.0.0.1:{local}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def call(base: str, method: str, path: str, body: dict | None = None, timeout_s: float = 10) -> tuple[int, dict]:
    def request() -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {}
        except OSError as exc:
            return 0, {"error": str(exc)}
    return node.in_node_network(request)


def completed(base: str, instance_id: str) -> dict | None:
    status, found = call(base, "GET", f"/run/{instance_id}")
    return found if status == 200 and found.get("runtime_status") in ("COMPLETED", "FAILED", "TERMINATED") else None


# --- the page's path ---------------------------------------------------------------------------
def test_the_manifests_run_the_service_with_the_sidecar_daprs_injector_added_beside_the_demo_redis_and_zipkin(
        deployed):
    assert "deployment.apps/durable-agent-service created" in deployed.walked
    assert 'deployment "durable-agent-service" successfully rolled out' in deployed.walked
    service = [p for p in pods("app=durable-agent-service") if ready(p)]
    assert len(service) == 1, [p["metadata"]["name"] for p in service]
    containers = {c["name"]: c["image"] for c in service[0]["spec"]["containers"]}
    assert containers == {"app": "tiny-durable-agent:local", "daprd": f"{dapr.REGISTRY}/daprd:{dapr.VERSION}"}
    assert [p["metadata"]["name"] for p in pods("app=redis") if ready(p)] == ["redis-0"]
    assert len([p for p in pods("app=zipkin") if ready(p)]) == 1
    claim = json.loads(kubectl("get", "pvc", "data-redis-0", "-o", "json"))
    assert claim["status"]["phase"] == "Bound"


def test_post_run_through_a_port_forward_completes_with_the_scripted_llms_answer_and_the_secrets_key(deployed):
    started = walk("run").stdout
    assert "HTTP/1.1 200 OK" in started, started
    instance_id = re.search(r'"instance_id":"([0-9a-f]{32})"', started).group(1)

    def status() -> dict | None:
        forward = BLOCKS["run"].splitlines()[0]  # the port-forward of the run's block, still running for a user
        found = json.loads(walk(forward, "status", instance_id=instance_id).stdout.rsplit("\n", 1)[-1] or "{}")
        return found if found.get("runtime_status") == "COMPLETED" else None

    final = wait_for(status, f"run {instance_id} COMPLETED", timeout_s=120, interval_s=1)
    assert json.loads(final["serialized_output"])["content"] == KUBE_ANSWER
    asked = deployed.llm.calls_mentioning(README_TASK)
    # The key of the Secret `openai`, resolved by Dapr's operator, is what the component sends.
    assert asked and {c.authorization for c in asked} == {f"Bearer {LLM_KEY}"}


def test_a_publish_to_assistant_topic_on_the_node_starts_a_run_that_completes(deployed):
    def answered() -> tuple[int, int]:  # the task's calls answered so far: (task calls, summary calls)
        calls = [c for c in deployed.llm.calls_mentioning(README_TASK) if c.answered_status == 200]
        return sum(not c.is_summary for c in calls), sum(c.is_summary for c in calls)

    # The page publishes the README's task, which the run of the test before asked too: one run more of it.
    wait_for(lambda: deployed.llm.in_flight == 0, "the earlier runs' LLM calls answered", timeout_s=60)
    tasks_before, summaries_before = answered()
    published = walk("publish").stdout
    assert "HTTP/1.1 204 No Content" in published, published

    def finished() -> bool:
        tasks, summaries = answered()
        return tasks > tasks_before and summaries > summaries_before

    wait_for(finished, "the published run to answer and be summarised", timeout_s=120)


def test_the_runs_traces_reach_the_demo_zipkin_on_the_node(deployed):
    walk("run")  # a run of its own: the test does not depend on the order of the others

    def traces() -> list | None:
        found = json.loads(walk("traces").stdout.rsplit("\n", 1)[-1] or "[]")
        services = {span.get("localEndpoint", {}).get("serviceName") for trace in found for span in trace}
        return found if "durable-agent-service" in services else None

    wait_for(traces, "a trace of durable-agent-service in Zipkin", timeout_s=120, interval_s=2)


# --- faults ------------------------------------------------------------------------------------
def test_an_app_pod_deleted_while_its_run_waits_on_the_llm_completes_the_run_on_the_pod_that_replaces_it(deployed):
    script = deployed.llm.script("app pod deleted mid LLM call")
    task = script.task("Write a haiku about a deleted pod.")
    script.hold()
    pod = wait_for(app_pod, "a Ready app pod", timeout_s=120)
    with port_forward(f"pod/{pod}", 18001, 8001) as base:
        status, started = call(base, "POST", "/run", {"task": task})
    assert status == 200, started
    instance_id = started["instance_id"]
    wait_for(script.task_calls, "the run's LLM call, held", timeout_s=60)

    deleted_at = time.monotonic()
    kubectl("delete", "pod", pod, "--wait=true", "--timeout=120s")  # SIGTERM to both containers; the pod gone
    gone_at = time.monotonic()
    script.release()  # the held call's answer now goes to a connection that is closed
    replacement = wait_for(lambda: app_pod(other_than=pod), "the Deployment's new app pod Ready", timeout_s=300)
    ready_at = time.monotonic()
    with port_forward(f"pod/{replacement}", 18001, 8001) as base:
        final = wait_for(lambda: completed(base, instance_id), f"run {instance_id} to finish", timeout_s=180)
    done_at = time.monotonic()
    script.close()

    assert final["runtime_status"] == "COMPLETED", final
    assert json.loads(final["serialized_output"])["content"] == DEFAULT_ANSWER
    task_calls = [c for c in script.calls if not c.is_summary]
    assert len(task_calls) >= 2  # the held one, cut with the pod, and the one the new pod's run made
    measured = dict(delete_to_pod_gone_s=round(gone_at - deleted_at, 1),
                    delete_to_new_pod_ready_s=round(ready_at - deleted_at, 1),
                    delete_to_completed_s=round(done_at - deleted_at, 1), llm_task_calls=len(task_calls))
    record_figure("Kube fault: app pod deleted mid LLM call", **measured)
    figures.keep("Kube fault: app pod deleted mid LLM call", **measured)


LOAD_RUNS = 80
LOAD_INTERVAL_S = 0.5
LLM_LATENCY_S = 1.0
FAULTS = [(10.0, "dapr-placement-server-0", "placement"), (25.0, "dapr-scheduler-server-0", "scheduler")]


def test_a_placement_pod_and_a_scheduler_pod_deleted_under_steady_load_every_acknowledged_run_completes(deployed):
    script = deployed.llm.script("control-plane pods deleted under load")
    script.set_delay(LLM_LATENCY_S)
    sent: dict[str, float] = {}
    answers: dict[str, tuple[int, dict]] = {}
    faults: list[dict] = []
    with port_forward("svc/durable-agent-service", 18002, 8001) as base, ThreadPoolExecutor(16) as pool:
        started = time.monotonic()
        futures = {}
        pending_faults = list(FAULTS)
        for number in range(LOAD_RUNS):
            due = started + number * LOAD_INTERVAL_S
            time.sleep(max(0.0, due - time.monotonic()))  # pacing the load, not waiting for anything
            while pending_faults and time.monotonic() - started >= pending_faults[0][0]:
                _, pod, kind = pending_faults.pop(0)
                faults.append({"kind": kind, "pod": pod, "at": time.monotonic(), "wall": time.time()})
                kubectl("-n", dapr.NAMESPACE, "delete", "pod", pod, "--wait=false")
            task = script.task(f"Write a haiku under load, number {number}.")
            sent[task] = time.monotonic()
            futures[task] = pool.submit(call, base, "POST", "/run", {"task": task}, 30)
        for task, future in futures.items():
            answers[task] = future.result()
        acknowledged = {task: found["instance_id"] for task, (status, found) in answers.items() if status == 200}
        done_at: dict[str, float] = {}

        def all_done() -> bool:
            for task, instance_id in acknowledged.items():
                if task not in done_at and completed(base, instance_id):
                    done_at[task] = time.monotonic()
            return len(done_at) == len(acknowledged)

        wait_for(all_done, lambda: f"{len(acknowledged) - len(done_at)} acknowledged runs still unfinished",
                 timeout_s=600, interval_s=0.5)
        outcomes = {task: completed(base, acknowledged[task])["runtime_status"] for task in acknowledged}
    script.close()

    assert [task for task, outcome in outcomes.items() if outcome != "COMPLETED"] == []
    for fault in faults:  # each deleted pod comes back under its name, Ready

        def back(fault: dict = fault) -> dict | None:
            found = json.loads(kubectl("-n", dapr.NAMESPACE, "get", "pod", fault["pod"], "-o", "json"))
            return found if ready(found) else None

        try:
            replaced = wait_for(back, f"{fault['pod']} Ready again", timeout_s=180, interval_s=1)
        except BaseException:
            print(node.kubectl("-n", dapr.NAMESPACE, "logs", fault["pod"], "--tail=60").stdout)
            raise
        became_ready = next(c["lastTransitionTime"] for c in replaced["status"]["conditions"] if c["type"] == "Ready")
        fault["ready_again_s"] = round(datetime.fromisoformat(became_ready.replace("Z", "+00:00")).timestamp()
                                       - fault["wall"], 1)
    took = [done_at[t] - sent[t] for t in acknowledged]
    task_calls = [c for c in script.calls if not c.is_summary]
    measured = {f"Kube fault under load: {f['kind']} pod deleted": dict(
        which=f["pod"],
        delete_to_next_completed_run_s=round(min(d for d in done_at.values() if d > f["at"]) - f["at"], 1),
        delete_to_pod_ready_again_s=f["ready_again_s"]) for f in faults}
    measured["Kube load: steady load through both deletions"] = dict(
        runs_sent=LOAD_RUNS, acknowledged=len(acknowledged), completed=len(done_at),
        unanswered=LOAD_RUNS - len(acknowledged), run_p50_s=round(percentile(took, 50), 2),
        run_p95_s=round(percentile(took, 95), 2), llm_calls_repeated=len(task_calls) - len(acknowledged),
        rate_per_s=round(1 / LOAD_INTERVAL_S, 1), llm_latency_s=LLM_LATENCY_S)
    for name, values in measured.items():
        record_figure(name, **values)
        figures.keep(name, **values)
    assert acknowledged, answers
