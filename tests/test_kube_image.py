"""The container image of deploy/kubernetes/Dockerfile, built by a real OCI builder and run.

buildah builds the Dockerfile as it is (tools/proof/kube_image.py), `FROM python:3.11-slim` being a
base image made on this machine by scripts/install-kube-image.sh (Debian bookworm by mmdebstrap), and
podman runs the image with runc as the app of a `dapr run` with the README's flags, on the suite's
local stack: the service in the container answers POST /run with the scripted LLM's answer. The
build is skipped when an image of the same inputs is there (its store is $TDA_HOME/kube-image), and a
changed script costs only the layers after the `pip install` one. No Kubernetes here: the pod's
container, as the pod would run it, minus the cluster (docs/kubernetes.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from helpers import wait_for
from tools.proof import kube_image
from tools.stack import commands as stack
from tools.stack.llm import choose_llm
from tools.stack.processes import StackError, spawn, stop_dapr_run, wait_until
from tools.stack.settings import FACTS, LOG_DIR, NAME_RESOLUTION_DB, ROOT, SERVICE_URL

SERVICE_IMAGE = FACTS["KUBE_SERVICE_IMAGE"]


@pytest.fixture(scope="module")
def image() -> str:
    """The image of this checkout's Dockerfile, built here unless one of the same inputs is there.
    docs/kubernetes.md's command first: returns at once when everything is there (`make test` runs it
    before the suite, with the network that its first run needs)."""
    setup = subprocess.run(["bash", "scripts/install-kube-image.sh"], cwd=ROOT, capture_output=True, text=True,
                           timeout=1800)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    try:
        name, seconds = kube_image.build(ROOT, log=LOG_DIR / "kube-image-build.log")
    except kube_image.ImageError as exc:
        pytest.fail(str(exc))
    print(f"{name}: {f'built in {seconds:.1f} s' if seconds else 'already built from the same inputs'}")
    return name


def in_container(image: str, *command: str) -> subprocess.CompletedProcess:
    """`command` in a throw-away container of `image`, without network."""
    return subprocess.run(kube_image.podman("run", "--rm", "--network=none", *kube_image.RUNTIME_FLAGS, image,
                                            *command), capture_output=True, text=True, timeout=120)


def test_the_image_runs_python_3_11_as_the_numeric_user_the_pod_requires(image):
    result = in_container(image, "python", "-c", "import os, sys; print(sys.version_info[:2], os.getuid())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "(3, 11) 10001"


def _finished_run(instance_id: str) -> dict | None:
    response = httpx.get(f"{SERVICE_URL}/run/{instance_id}", timeout=30)
    # 500: known, a status read while the run's state is half written in Redis (helpers.Service.wait_until_done).
    status = response.json() if response.status_code == 200 else {}
    return status if status.get("runtime_status") in ("COMPLETED", "FAILED", "TERMINATED") else None


def test_the_image_built_by_buildah_starts_the_service_and_completes_a_run(image, local_stack, scripted_llm,
                                                                            tmp_path: Path):
    # The container is the app of a `dapr run` with the README's flags: host network (the sidecar and the
    # app meet on 127.0.0.1, as in a pod), and the sidecar's DAPR_* and APP_* variables passed in.
    container = f"tda-image-{uuid.uuid4().hex[:8]}"
    app = kube_image.podman("run", "--rm", "--name", container, "--network=host", *kube_image.RUNTIME_FLAGS,
                            "--env", "DAPR_*", "--env", "APP_*", image)
    llm = choose_llm(scripted_llm.client_env())
    resources = shutil.copytree(llm.resources, tmp_path / "resources")
    config = tmp_path / "config.yaml"  # the CLI's default configuration, its relative SQLite path made absolute
    default_config = (local_stack.runtime_path or Path.home()) / ".dapr" / "config.yaml"
    config.write_text(default_config.read_text().replace(".stack/nameresolution.db", str(NAME_RESOLUTION_DB)))
    flags = stack.SERVICE_APP[:stack.SERVICE_APP.index("--")]
    argv, env = stack.dapr_run(local_stack, [*flags, "--", *app], llm, resources=resources, config=config,
                               base_env=scripted_llm.client_env())
    stop_dapr_run("service")  # the session's service holds the ports; the `service` fixture starts it again
    log = LOG_DIR / "kube-image-service.log"
    process = spawn("kube-image-service", argv, env=env, cwd=tmp_path, log=log)
    try:
        try:
            wait_until(lambda: stack.service_ready(env), "the service", process=process, log=log)
        except StackError as exc:
            app_lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("== APP ==")]
            pytest.fail(f"the service did not start in a container of {image}: {str(exc).splitlines()[0]}\n"
                        + "\n".join(app_lines[-8:]))
        task = scripted_llm.task("Write a haiku from inside the container")
        scripted_llm.answer_when(task, "Built by buildah, it runs")
        response = httpx.post(f"{SERVICE_URL}/run", json={"task": task}, timeout=30)
        assert response.status_code == 200, response.text
        status = wait_for(lambda: _finished_run(response.json()["instance_id"]), "the run to finish")
        assert status["runtime_status"] == "COMPLETED", status
        assert json.loads(status["serialized_output"])["content"] == "Built by buildah, it runs"
    finally:
        stop_dapr_run("kube-image-service")
        subprocess.run(kube_image.podman("rm", "--force", "--ignore", "--time", "5", container),
                       capture_output=True, timeout=60)
