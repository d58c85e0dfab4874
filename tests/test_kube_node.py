"""A real Kubernetes node on this machine (`make kube-up`, tools/kube/node.py) runs the service's image.

The node: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and kubelet of
Kubernetes 1.34.4 built from the Go module proxy, Debian's containerd, runc and CNI plugins, a pause image made
here, all in a network namespace of their own. The image of deploy/kubernetes/Dockerfile
(tests/test_kube_image.py builds it) reaches containerd by `ctr images import`, never by a pull, and a
Pod of it is scheduled, given an address on the pods' bridge, and run by kubelet. No Dapr on the node
yet (docs/kubernetes.md says what ran and what did not)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import wait_for
from tools.kube import node
from tools.proof import kube_image
from tools.stack.settings import ROOT


def make(target: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", target], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def running_node():
    """`make kube-up`, and `make kube-down` after the module's tests, which must leave nothing running."""
    up = make("kube-up", timeout=1800)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield up.stdout
    finally:
        down = make("kube-down", timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        left = node.left_running()
        assert left == [], left
        assert not Path(f"/run/netns/{node.NETNS}").exists()


def kubectl(*args: str) -> str:
    result = node.kubectl(*args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_make_kube_up_starts_a_node_that_reports_ready_on_kubernetes_1_34(running_node):
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    assert [item["metadata"]["name"] for item in nodes] == [node.NODE_NAME]
    info = nodes[0]["status"]["nodeInfo"]
    assert info["kubeletVersion"] == f"v{node.VERSION}"
    assert info["containerRuntimeVersion"].startswith("containerd://")
    ready = [c for c in nodes[0]["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True", ready


@pytest.fixture(scope="module")
def imported_image(running_node) -> str:
    """The service's image (tests/test_kube_image.py builds the same), imported into the node's containerd."""
    image, _ = kube_image.build(ROOT)
    node.import_image(image)
    return image


def apply(obj: dict) -> None:
    result = node.kubectl("apply", "-f", "-", input=json.dumps(obj))
    assert result.returncode == 0, result.stderr


def pod_of(name: str, image: str, command: list[str], labels: dict | None = None, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "app", "image": image, "imagePullPolicy": "Never", "command": command,
                                     **spec}], "restartPolicy": "Never"}}


def finished(name: str) -> dict | None:
    status = json.loads(kubectl("get", "pod", name, "-o", "json"))["status"]
    waiting = [c["state"]["waiting"].get("reason") for c in status.get("containerStatuses", [])
               if "waiting" in c["state"]]
    # ErrImageNeverPull: the image is not in containerd, and the pod would wait forever.
    return status if status.get("phase") in ("Succeeded", "Failed") or "ErrImageNeverPull" in waiting else None


def test_a_pod_of_the_service_image_imported_not_pulled_runs_on_the_node(imported_image):
    image = imported_image
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "image-check"},
           "spec": {"restartPolicy": "Never", "containers": [{
               "name": "app", "image": image, "imagePullPolicy": "Never",
               "command": ["python", "-c", "import os, sys, input_guard, dapr_agents; "
                                           "print('python', *sys.version_info[:2], 'uid', os.getuid())"]}]}}
    apply(pod)

    status = wait_for(lambda: finished("image-check"), "the pod to finish", timeout_s=300)
    logs = kubectl("logs", "image-check")
    assert status["phase"] == "Succeeded", (status, logs)
    assert logs.strip() == "python 3 11 uid 10001"
    assert status["podIP"].startswith(node.POD_CIDR.split(".0.0/")[0] + ".")


# A client in a pod: the web pod's page through its Service's cluster address, its full name and its short
# name (CoreDNS, and the search path kubelet writes), then the apiserver's version through the `kubernetes`
# Service, with the pod's service-account token and CA, as Dapr's operator and injector will reach it.
# kube-proxy writes a new Service's rules a moment after its endpoints are ready (seen: connection refused in
# a CI run), so the client polls each address, with a deadline.
CLIENT = """
import json, os, ssl, sys, time, urllib.request
def read(url, **options):
    deadline = time.monotonic() + 60
    while True:
        try:
            return urllib.request.urlopen(url, timeout=10, **options).read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
for url in (f"http://{sys.argv[1]}/", "http://web.default.svc.cluster.local/", "http://web/"):
    print("web", b"durable_agent_service.py" in read(url))
secrets = "/var/run/secrets/kubernetes.io/serviceaccount"
context = ssl.create_default_context(cafile=f"{secrets}/ca.crt")
request = urllib.request.Request(
    f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/version",
    headers={"Authorization": "Bearer " + open(f"{secrets}/token").read()})
print("apiserver", json.loads(read(request, context=context))["gitVersion"])
"""


def test_a_pod_reaches_another_pod_and_the_apiserver_through_their_services_addresses_and_names(imported_image):
    apply(pod_of("web", imported_image, ["python", "-m", "http.server", "8080"], labels={"app": "web"},
                 readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1}))
    apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    wait_for(lambda: kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o",
                             "jsonpath={.items[*].endpoints[*].addresses[*]}").strip(),
             "the web pod ready behind its Service", timeout_s=300)
    address = kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}").strip()
    assert address.startswith(node.SERVICE_CIDR.rsplit(".", 1)[0] + ".")

    apply(pod_of("client", imported_image, ["python", "-c", CLIENT, f"{address}:80"]))
    status = wait_for(lambda: finished("client"), "the client pod to finish", timeout_s=300)
    logs = kubectl("logs", "client")
    assert status["phase"] == "Succeeded", (status, logs)
    assert logs.split() == ["web", "True"] * 3 + ["apiserver", f"v{node.VERSION}"]
