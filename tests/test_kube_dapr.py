"""Dapr 1.18.2 on the real node of `make kube-up`, installed by its own Helm chart (`make kube-dapr`).

The chart dapr/dapr 1.18.2 with deploy/kubernetes/dapr-values.yaml (HA: three replicas of the operator,
placement, scheduler, sentry and sidecar injector) and deploy/kubernetes/node/dapr-node-values.yaml (nothing
pulled, no volume claims); the images it names, ghcr.io/dapr/<service>:1.18.2, are built here from
github.com/dapr/dapr v1.18.2 (scripts/install-kube-dapr.sh, tools/kube/dapr.py) and imported into containerd.
Then Dapr's injector, not us, adds the daprd sidecar to an annotated pod, and the sidecar becomes Ready."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import wait_for
from tools.kube import dapr, node
from tools.stack.settings import ROOT

SERVICES = ["dapr-operator", "dapr-placement-server", "dapr-scheduler-server", "dapr-sentry", "dapr-sidecar-injector"]


def make(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def kubectl(*args: str) -> str:
    result = node.kubectl(*args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def pods(namespace: str) -> list[dict]:
    return json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


@pytest.fixture(scope="module")
def dapr_on_node():
    """`make kube-up` then `make kube-dapr`; `make kube-down` after the module, which must leave nothing running."""
    up = make("kube-up", timeout=1800)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        installed = make("kube-dapr", timeout=1800)
        events = node.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", timeout=60).stdout[-4000:]
        assert installed.returncode == 0, installed.stdout + installed.stderr + events
        yield installed.stdout
    finally:
        down = make("kube-down", timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        left = node.left_running()
        assert left == [], left
        assert not Path(f"/run/netns/{node.NETNS}").exists()


def test_make_kube_dapr_installs_dapr_1_18_2_by_its_helm_chart_three_ready_replicas_of_each_service(dapr_on_node):
    control_plane = pods(dapr.NAMESPACE)
    by_service = {service: [p for p in control_plane if p["metadata"]["labels"].get("app") == service]
                  for service in SERVICES}
    assert {service: len(found) for service, found in by_service.items()} == dict.fromkeys(SERVICES, 3), \
        [p["metadata"]["name"] for p in control_plane]
    assert [p["metadata"]["name"] for p in control_plane if not ready(p)] == []
    images = {c["image"] for p in control_plane for c in p["spec"]["containers"]}
    assert images <= set(dapr.IMAGES), images
    assert {c["imagePullPolicy"] for p in control_plane for c in p["spec"]["containers"]} == {"Never"}
    # The chart of the github.com/dapr/dapr v1.18.2 module, which Dapr's release packages as the 1.18.2 chart:
    # its Chart.yaml says 0.0.0 (the packaging stamps the version), our values the images' tag.
    release = json.loads(dapr.helm("list", "-n", dapr.NAMESPACE, "-o", "json", timeout=60).stdout)
    assert [(r["name"], r["chart"], r["status"]) for r in release] == [("dapr", "dapr-0.0.0", "deployed")]


def test_daprs_injector_adds_a_ready_daprd_sidecar_to_an_annotated_pod(dapr_on_node):
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "annotated", "annotations": {"dapr.io/enabled": "true", "dapr.io/app-id": "annotated"}},
           "spec": {"containers": [{"name": "app", "image": node.PAUSE_IMAGE, "imagePullPolicy": "Never"}]}}
    result = node.kubectl("apply", "-f", "-", input=json.dumps(pod))
    assert result.returncode == 0, result.stderr

    def annotated() -> dict | None:
        found = json.loads(kubectl("get", "pod", "annotated", "-o", "json"))
        return found if ready(found) else None

    try:
        found = wait_for(annotated, "the annotated pod and its sidecar Ready", timeout_s=300)
    except Exception:
        print(kubectl("describe", "pod", "annotated"))
        print(node.kubectl("logs", "annotated", "-c", "daprd", timeout=60).stdout[-3000:])
        raise
    containers = {c["name"]: c for c in found["spec"]["containers"]}
    assert sorted(containers) == ["app", "daprd"]
    assert containers["daprd"]["image"] == f"{dapr.REGISTRY}/daprd:{dapr.VERSION}"
    assert containers["daprd"]["imagePullPolicy"] == "Never"
    logs = kubectl("logs", "annotated", "-c", "daprd")
    assert f"Starting Dapr Runtime -- version {dapr.VERSION}" in logs, logs[-2000:]
