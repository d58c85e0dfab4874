"""deploy/kubernetes/ is checked here without a cluster: a real kube-apiserver
(built from k8s.io/kubernetes by scripts/install-kube-check.sh) dry-runs every
manifest and the dapr/dapr chart rendered with our Helm values, after the
Dapr 1.18.2 CRDs are installed in it; and the Kubernetes files are compared
with resources/, the sidecar annotations with Dapr's source, the secrets with
the commands in docs/kubernetes.md. Nothing here schedules a pod, pulls an
image or runs Dapr on Kubernetes; the image's files are checked by starting
the service from exactly them, on the suite's local stack."""

from __future__ import annotations

import json
import os
import posixpath
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from helpers import wait_for
from tools.proof import kube_check
from tools.stack import commands as stack
from tools.stack.llm import choose_llm
from tools.stack.processes import (
    StackError,
    die_with_parent,
    port_in_use,
    rel,
    require_free,
    spawn,
    stop_dapr_run,
    stop_group,
    wait_until,
)
from tools.stack.settings import (
    APP_PORT,
    DAPR_RUNTIME_VERSION,
    FACTS,
    LOG_DIR,
    NAME_RESOLUTION_DB,
    PYTHON_MIN_VERSION,
    RESOURCES_DIR,
    ROOT,
    SECURE_DIR,
    SERVICE_APP_ID,
    SERVICE_URL,
    SIDECAR_METRICS_PORT,
)

MANIFESTS = kube_check.MANIFESTS_DIR
DEMO_REDIS_CHECK_PORT = int(FACTS["DEMO_REDIS_CHECK_PORT"])
VERDICT = re.compile(r"^(accepted|REJECTED)  (\S+)  \((.+?)\)(?:: (.*))?$", re.M)


def run_kube_check(*args: str) -> tuple[subprocess.CompletedProcess, list[tuple[str, str, str, str]]]:
    """`python -m tools.proof.kube_check ARGS`, and its verdicts: (verdict, Kind/name, source, reason)."""
    result = subprocess.run([sys.executable, "-m", "tools.proof.kube_check", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=240)
    return result, VERDICT.findall(result.stdout)


@pytest.fixture(scope="module")
def checked():
    """One run of the check over deploy/kubernetes/manifests and the chart; its servers are stopped when it ends."""
    result, verdicts = run_kube_check()
    assert "CRDs installed: Component, Configuration" in result.stdout, result.stdout + result.stderr
    return result, verdicts


def manifest_objects(directory: Path = MANIFESTS) -> list[tuple[str, dict]]:
    return [(rel(file), obj) for file in sorted(directory.glob("*.yaml"))
            for obj in kube_check.documents(file)]


def the(kind: str, directory: Path = MANIFESTS) -> list[dict]:
    return [obj for _, obj in manifest_objects(directory) if obj["kind"] == kind]


def one(kind: str, name: str) -> dict:
    (obj,) = [obj for obj in the(kind) if obj["metadata"]["name"] == name]
    return obj


def test_every_kubernetes_manifest_is_accepted_by_a_real_kube_apiserver_dry_run(checked):
    result, verdicts = checked
    expected = {(source, kube_check.name_of(obj)) for source, obj in manifest_objects()}
    accepted = {(source, name) for verdict, name, source, _ in verdicts if verdict == "accepted"}

    assert result.returncode == 0, result.stdout + result.stderr
    assert expected <= accepted, f"not accepted: {expected - accepted}\n{result.stdout}"
    kinds = {name.split("/")[0] for _, name in expected}
    assert {"Deployment", "Service", "StatefulSet", "Component", "Configuration", "Resiliency"} <= kinds


def test_the_dapr_chart_with_our_ha_values_renders_three_replicas_the_same_apiserver_accepts(checked):
    result, verdicts = checked
    rendered = kube_check.render_chart()
    accepted = {name for verdict, name, source, _ in verdicts if verdict == "accepted" and "dapr chart" in source}

    assert {kube_check.name_of(obj) for obj in rendered} <= accepted, result.stdout
    workloads = {obj["metadata"]["name"]: obj["spec"]["replicas"] for obj in rendered
                 if obj["kind"] in ("Deployment", "StatefulSet")}
    assert workloads == {name: 3 for name in ("dapr-operator", "dapr-sentry", "dapr-sidecar-injector",
                                              "dapr-placement-server", "dapr-scheduler-server")}
    images = {container["image"] for obj in rendered if obj["kind"] in ("Deployment", "StatefulSet")
              for container in obj["spec"]["template"]["spec"]["containers"]}
    assert all(image.endswith(f":{DAPR_RUNTIME_VERSION}") for image in images), images


def test_the_same_dry_run_rejects_manifests_with_a_misspelt_field(tmp_path):
    component = yaml.safe_load((MANIFESTS / "agent-memory.yaml").read_text())
    component["spec"]["metdata"] = component["spec"].pop("metadata")
    deployment, service = kube_check.documents(MANIFESTS / "durable-agent-service.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePulPolicy"] = container.pop("imagePullPolicy")
    (tmp_path / "component.yaml").write_text(yaml.safe_dump(component))
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump_all([deployment, service]))

    result, verdicts = run_kube_check(str(tmp_path), "--no-chart")

    assert result.returncode == 1, result.stdout + result.stderr
    reasons = {name: reason for verdict, name, _, reason in verdicts if verdict == "REJECTED"}
    assert set(reasons) == {"Component/agent-memory", "Deployment/durable-agent-service"}, result.stdout
    assert "metdata" in reasons["Component/agent-memory"]
    assert "imagePulPolicy" in reasons["Deployment/durable-agent-service"]


# --- the Kubernetes files against the local ones ----------------------------------
def components(directory: Path) -> dict[str, dict]:
    """Each Component of the directory's YAML files: its type and metadata entries."""
    return {obj["metadata"]["name"]: {"type": obj["spec"]["type"],
                                      "metadata": {item["name"]: item for item in obj["spec"].get("metadata", [])}}
            for _, obj in manifest_objects(directory) if obj["kind"] == "Component"}


def component_drift(kubernetes_dir: Path, local_dir: Path) -> list[str]:
    """How the Kubernetes components differ from the local ones in names, types, metadata keys,
    and in the values that both write out (a secret on one side may be a value on the other)."""
    kube, local = components(kubernetes_dir), components(local_dir)
    drift = [f"component {name} only in {where}" for name, where in
             [*((n, "resources/") for n in local.keys() - kube.keys()),
              *((n, "Kubernetes") for n in kube.keys() - local.keys())]]
    for name in sorted(kube.keys() & local.keys()):
        ours, theirs = kube[name], local[name]
        if ours["type"] != theirs["type"]:
            drift.append(f"{name}: type {ours['type']} in Kubernetes, {theirs['type']} in resources/")
        if ours["metadata"].keys() != theirs["metadata"].keys():
            drift.append(f"{name}: metadata keys {sorted(ours['metadata'])} in Kubernetes, "
                         f"{sorted(theirs['metadata'])} in resources/")
        for key in ours["metadata"].keys() & theirs["metadata"].keys():
            a, b = ours["metadata"][key], theirs["metadata"][key]
            if "value" in a and "value" in b and a["value"] != b["value"]:
                drift.append(f"{name}: {key} is {a['value']!r} in Kubernetes, {b['value']!r} in resources/")
    return drift


def test_the_kubernetes_components_have_the_names_types_and_metadata_keys_of_resources():
    assert len(components(RESOURCES_DIR)) >= 7
    assert component_drift(MANIFESTS, RESOURCES_DIR) == []
    for component in the("Component"):
        for item in component["spec"]["metadata"]:
            if item["name"] in ("redisHost", "redisPassword", "key"):
                assert "secretKeyRef" in item and component["auth"]["secretStore"] == "kubernetes", component


def test_the_component_comparison_notices_a_renamed_metadata_key(tmp_path):
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    memory = copy / "agent-memory.yaml"
    memory.write_text(memory.read_text().replace("name: redisPassword", "name: redisPasword"))
    (copy / "agent-registry.yaml").unlink()

    drift = component_drift(copy, RESOURCES_DIR)

    assert any(line.startswith("agent-memory: metadata keys") for line in drift), drift
    assert "component agent-registry only in resources/" in drift


def test_the_kubernetes_configuration_and_resiliency_are_the_local_ones():
    local_config = yaml.safe_load((SECURE_DIR / "service-config.yaml").read_text())["spec"]
    (config,) = the("Configuration")
    local_resiliency = yaml.safe_load((RESOURCES_DIR / "resiliency.yaml").read_text())
    (resiliency,) = the("Resiliency")
    values = yaml.safe_load(kube_check.VALUES_FILE.read_text())

    assert config["spec"]["accessControl"] == local_config["accessControl"]
    assert config["spec"]["tracing"]["samplingRate"] == local_config["tracing"]["samplingRate"]
    zipkin = one("Service", "zipkin")
    assert config["spec"]["tracing"]["zipkin"]["endpointAddress"] == \
        f"http://zipkin:{zipkin['spec']['ports'][0]['port']}/api/v2/spans"
    assert local_config["mtls"]["enabled"] is True and values["global"]["mtls"]["enabled"] is True
    assert resiliency["metadata"]["name"] == local_resiliency["metadata"]["name"]
    assert resiliency["spec"] == local_resiliency["spec"]


def test_the_deployment_uses_sidecar_annotations_of_dapr_1_18_2_with_the_readme_dapr_run_flags():
    known = set(re.findall(r'^\s*Key\w+\s*=\s*"(dapr\.io/[^"]+)"', kube_check.ANNOTATIONS_GO.read_text(), re.M))
    deployment = one("Deployment", SERVICE_APP_ID)
    pod = deployment["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    flags = stack.SERVICE_APP
    container = pod["spec"]["containers"][0]

    assert len(known) > 50 and set(annotations) <= known, set(annotations) - known
    assert annotations == {
        "dapr.io/enabled": "true",
        "dapr.io/app-id": SERVICE_APP_ID,
        "dapr.io/app-port": str(APP_PORT),
        "dapr.io/config": the("Configuration")[0]["metadata"]["name"],
        "dapr.io/log-level": flags[flags.index("--log-level") + 1],
        "dapr.io/enable-api-logging": str("--enable-api-logging" in flags).lower(),
        "dapr.io/enable-metrics": "true",
        "dapr.io/metrics-port": str(SIDECAR_METRICS_PORT),
    }
    assert {"name": "APP_PORT", "value": str(APP_PORT)} in container["env"]
    assert container["ports"] == [{"name": "http", "containerPort": APP_PORT}]


def leaf_paths(tree: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths |= leaf_paths(value, path + ".") if isinstance(value, dict) and value else {path}
    return paths


def test_every_key_of_our_helm_values_is_a_key_of_the_dapr_chart():
    ours = leaf_paths(yaml.safe_load(kube_check.VALUES_FILE.read_text()))
    chart = leaf_paths(yaml.safe_load((kube_check.CHART / "values.yaml").read_text()))

    assert "global.ha.enabled" in ours
    assert ours <= chart, f"keys the dapr chart does not have (ignored by helm): {ours - chart}"


def secret_refs(node: object) -> set[tuple[str, str]]:
    """(Secret, key) of every secretKeyRef in a manifest: the components' and the containers' env."""
    if isinstance(node, list):
        return {ref for item in node for ref in secret_refs(item)}
    if not isinstance(node, dict):
        return set()
    found = {(node["secretKeyRef"]["name"], node["secretKeyRef"]["key"])} if "secretKeyRef" in node else set()
    return found | {ref for value in node.values() for ref in secret_refs(value)}


def test_the_secrets_the_docs_create_are_the_ones_the_manifests_read():
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    created = {(name, key) for name, literals in
               re.findall(r"kubectl create secret generic (\S+)((?: --from-literal=\S+)+)", docs)
               for key in re.findall(r"--from-literal=([\w.-]+)=", literals)}
    read = {ref for _, obj in manifest_objects() for ref in secret_refs(obj)}

    assert created and created == read


def test_the_dockerfile_builds_the_service_script_on_the_python_the_agent_needs():
    dockerfile = (kube_check.DEPLOY_DIR / "Dockerfile").read_text()
    version = ".".join(map(str, PYTHON_MIN_VERSION))
    copied = [source for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for source in line.split()[:-1]]

    assert re.search(rf"^FROM python:{re.escape(version)}-slim$", dockerfile, re.M)
    assert {"requirements.txt", "durable_agent_service.py"} <= set(copied)
    assert all((ROOT / source).is_file() for source in copied), copied
    assert 'CMD ["python", "durable_agent_service.py"]' in dockerfile
    deployment = one("Deployment", SERVICE_APP_ID)
    assert f"-t {deployment['spec']['template']['spec']['containers'][0]['image']} ." in dockerfile


def test_the_demo_redis_command_line_starts_a_redis_that_wants_the_password_and_writes_an_append_only_file(tmp_path):
    (statefulset,) = the("StatefulSet")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"] and " <<EOF" in container["args"][0]
    # The manifest's command line as it is, run by the local redis-server (the image's is 7.4), with the
    # data folder and a port of this test's own.
    script = container["args"][0].replace("/data", str(tmp_path)).replace(
        " <<EOF", f" --port {DEMO_REDIS_CHECK_PORT} --bind 127.0.0.1 <<EOF", 1)
    password = secrets.token_hex(12)
    require_free({"the demo Redis check": DEMO_REDIS_CHECK_PORT})
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / "kube-check-demo-redis.log", "wb") as log:
        process = psutil.Process(subprocess.Popen(
            die_with_parent(["sh", "-c", script]), env={**os.environ, "REDIS_PASSWORD": password},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True).pid)
    client = redis.Redis(host="127.0.0.1", port=DEMO_REDIS_CHECK_PORT, password=password, decode_responses=True)
    try:
        wait_for(lambda: port_in_use(DEMO_REDIS_CHECK_PORT), "the demo Redis", timeout_s=15)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert set(client.config_get("notify-keyspace-events")["notify-keyspace-events"]) == set("KA")
        stranger = redis.Redis(host="127.0.0.1", port=DEMO_REDIS_CHECK_PORT, protocol=2, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            stranger.ping()
        stranger.close()
        # `exec`: Redis replaces the shell, so the pod's SIGTERM reaches Redis itself.
        assert process.name() == "redis-server"
        client.set("written", "before shutdown")
        process.terminate()
        assert process.wait(timeout=15) == 0
        assert "before shutdown" in "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.aof*")
                                            if p.is_file())
    finally:
        client.close()
        stop_group(process)


# --- the image's file set, started for real -----------------------------------------------
# No Docker engine here, so the image is not built: its files are. What the Dockerfile's COPY lines take
# from the build context (the repository) that its ignore file lets in is laid out as the image would
# hold it, and the service is started from that folder under the README's `dapr run` flags. The
# virtualenv stands for the base image and `pip install -r requirements.txt`.
DOCKERFILE = kube_check.DEPLOY_DIR / "Dockerfile"
# The RUN lines whose effect is known: the requirements (the virtualenv has them) and the user. Any
# other RUN may add files to the image that no COPY line shows: the reader refuses it.
KNOWN_RUNS = (re.compile(r"pip install -r requirements\.txt"),
              re.compile(r"useradd --uid \d+ --no-create-home --shell /usr/sbin/nologin \w+"))


class UnderstoodNot(ValueError):
    """A Dockerfile or ignore-file construct this small reader does not know how Docker treats."""


@dataclass
class ImageFiles:
    files: dict[str, Path]  # each file's path in the image -> the file of the build context it comes from
    workdir: str
    env: dict[str, str]
    cmd: list[str]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments), in order: comment lines dropped, continued lines joined."""
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    instructions = []
    for line in re.sub(r"\\[ \t]*\n", " ", kept).splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def ignore_patterns(text: str) -> list[str]:
    patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for pattern in patterns:
        if "**" in pattern or any(c in pattern for c in "[]\\") or pattern.removeprefix("!").startswith("/"):
            raise UnderstoodNot(f"ignore pattern {pattern!r}: only names with * and ? are understood here")
    return patterns


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the ignore file keeps `path` (relative to the context) out of the build context, as Docker
    decides: the last pattern that matches the path or a folder above it wins; `!` lets it in again."""
    parts, left_out = path.split("/"), False
    for pattern in patterns:
        name = pattern.removeprefix("!")
        regex = re.compile("".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in name))
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            left_out = not pattern.startswith("!")
    return left_out


def image_files(dockerfile: Path, context: Path) -> ImageFiles:
    """The files the image built from `dockerfile` with `context` holds (beside its base image's), its
    working directory, environment and command; UnderstoodNot for anything else the Dockerfile does."""
    patterns = ignore_patterns(dockerfile.with_name(dockerfile.name + ".dockerignore").read_text())
    image = ImageFiles({}, "/", {}, [])
    for keyword, arguments in dockerfile_instructions(dockerfile.read_text()):
        if keyword in ("FROM", "USER", "EXPOSE"):
            continue  # the base image is the virtualenv's Python; a user and a port add no file
        if keyword == "WORKDIR":
            image.workdir = posixpath.join(image.workdir, arguments)
        elif keyword == "ENV":
            for pair in arguments.split():
                name, equals, value = pair.partition("=")
                if not equals or any(c in value for c in "\"'$"):
                    raise UnderstoodNot(f"ENV {arguments}: only NAME=value pairs without quotes are understood")
                image.env[name] = value
        elif keyword == "RUN":
            if not any(known.fullmatch(arguments) for known in KNOWN_RUNS):
                raise UnderstoodNot(f"RUN {arguments}: what it adds to the image is not known here")
        elif keyword == "COPY":
            *sources, destination = arguments.split()
            if arguments.startswith(("-", "[")) or not sources or any(c in arguments for c in "*?[$"):
                raise UnderstoodNot(f"COPY {arguments}: only plain `COPY source... destination` is understood")
            target = posixpath.normpath(posixpath.join(image.workdir, destination))
            into_folder = destination.endswith("/") or target == posixpath.normpath(image.workdir)
            if len(sources) > 1 and not into_folder:
                raise UnderstoodNot(f"COPY {arguments}: several sources need a destination folder ending in /")
            for source in sources:
                _copy_into(image, source, target, into_folder, context, patterns)
        elif keyword == "CMD":
            image.cmd = json.loads(arguments) if arguments.startswith("[") else []
            if not image.cmd or not all(isinstance(part, str) for part in image.cmd):
                raise UnderstoodNot(f"CMD {arguments}: only the JSON form is understood")
        else:
            raise UnderstoodNot(f"{keyword} {arguments}: not an instruction this reader understands")
    return image


def _copy_into(image: ImageFiles, source: str, target: str, into_folder: bool, context: Path,
               patterns: list[str]) -> None:
    relative = posixpath.normpath(source)
    if relative.startswith("..") or posixpath.isabs(relative):
        raise UnderstoodNot(f"COPY {source}: outside the build context")
    path = context / relative
    if not path.exists() or (relative != "." and ignored(relative, patterns)):
        # What `docker build` says then: "failed to compute cache key: ... not found".
        raise FileNotFoundError(f"COPY {source}: not in the build context (its ignore file leaves it out, "
                                "or it does not exist)")
    if path.is_file():
        image.files[posixpath.join(target, path.name) if into_folder else target] = path
        return
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        inside = file.relative_to(context).as_posix()
        if not ignored(inside, patterns):
            image.files[posixpath.join(target, file.relative_to(path).as_posix())] = file


def lay_out(image: ImageFiles, root: Path) -> Path:
    """The image's files under `root`; returns its working directory there."""
    for image_path, source in image.files.items():
        (root / image_path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / image_path.lstrip("/"))
    workdir = root / image.workdir.lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def test_the_image_reader_follows_the_ignore_rules_and_refuses_what_it_does_not_understand(tmp_path):
    patterns = ignore_patterns("# only two files\n*\n!a.py\n!docs/b.md\n")
    assert [ignored(path, patterns) for path in ("a.py", "c.py", "docs/b.md", "docs/c.md", "lib/a.py")] == [
        False, True, False, True, True]
    (tmp_path / "a.py").write_text("print('a')\n")
    (tmp_path / "c.py").write_text("print('c')\n")
    (tmp_path / "Dockerfile.dockerignore").write_text("*\n!a.py\n")
    dockerfile = tmp_path / "Dockerfile"

    def read(instructions: str) -> ImageFiles:
        dockerfile.write_text(f"FROM python:3.11-slim\nWORKDIR /app\n{instructions}\n")
        return image_files(dockerfile, tmp_path)

    assert read('COPY a.py ./\nCMD ["python", "a.py"]').files == {"/app/a.py": tmp_path / "a.py"}
    with pytest.raises(FileNotFoundError, match="COPY c.py: not in the build context"):
        read("COPY c.py ./")
    for construct in ("ADD a.py ./", "COPY --chown=1:1 a.py ./", "COPY *.py ./", "RUN echo hi > b.py",
                      "ENTRYPOINT [\"python\"]", "CMD python a.py"):
        with pytest.raises(UnderstoodNot):
            read(construct)
    (tmp_path / "Dockerfile.dockerignore").write_text("**/*.py\n")
    with pytest.raises(UnderstoodNot):
        read("COPY a.py ./")


def _finished_run(instance_id: str) -> dict | None:
    response = httpx.get(f"{SERVICE_URL}/run/{instance_id}", timeout=30)
    # 500: known, a status read while the run's state is half written in Redis (helpers.Service.wait_until_done).
    status = response.json() if response.status_code == 200 else {}
    return status if status.get("runtime_status") in ("COMPLETED", "FAILED", "TERMINATED") else None


def test_the_service_starts_and_serves_from_exactly_the_files_the_image_holds(local_stack, scripted_llm, tmp_path):
    image = image_files(DOCKERFILE, ROOT)
    workdir = lay_out(image, tmp_path / "image")
    assert image.cmd and image.cmd[-1] in {posixpath.basename(path) for path in image.files}, image
    # The service as the pod runs it: the image's command, environment and files, beside a sidecar with the
    # README's flags; the components are the suite's (on Kubernetes they are cluster resources, not files).
    llm = choose_llm(scripted_llm.client_env())
    resources = shutil.copytree(llm.resources, tmp_path / "resources")
    config = tmp_path / "config.yaml"  # the CLI's default configuration, its relative SQLite path made absolute
    default_config = (local_stack.runtime_path or Path.home()) / ".dapr" / "config.yaml"
    config.write_text(default_config.read_text().replace(".stack/nameresolution.db", str(NAME_RESOLUTION_DB)))
    flags = stack.SERVICE_APP[:stack.SERVICE_APP.index("--")]
    argv, env = stack.dapr_run(local_stack, [*flags, "--", *image.cmd], llm, resources=resources, config=config,
                               base_env=scripted_llm.client_env())
    env = {name: value for name, value in env.items() if name != "PYTHONPATH"} | image.env
    stop_dapr_run("service")  # the session's service holds the ports; the `service` fixture starts it again
    log = LOG_DIR / "image-service.log"
    process = spawn("image-service", argv, env=env, cwd=workdir, log=log)
    try:
        try:
            wait_until(lambda: stack.service_ready(env), "the service", process=process, log=log)
        except StackError as exc:
            # The app's own last words, which the sidecar's lines in the log's tail would hide.
            app_lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("== APP ==")]
            pytest.fail(f"the service did not start from the image's files {sorted(image.files)}: "
                        f"{str(exc).splitlines()[0]}\n" + "\n".join(app_lines[-8:]))
        task = scripted_llm.task("Write a haiku from inside the image")
        scripted_llm.answer_when(task, "Nine files fewer, still it runs")
        response = httpx.post(f"{SERVICE_URL}/run", json={"task": task}, timeout=30)
        assert response.status_code == 200, response.text
        status = wait_for(lambda: _finished_run(response.json()["instance_id"]), "the run to finish")
        assert status["runtime_status"] == "COMPLETED", status
        assert json.loads(status["serialized_output"])["content"] == "Nine files fewer, still it runs"
    finally:
        stop_dapr_run("image-service")
