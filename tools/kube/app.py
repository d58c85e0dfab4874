"""The service's manifests on the node of `make kube-up`: the images they name, a volume, a shell.

`make kube-load` does here what `kind load docker-image` (or a push to a registry) does elsewhere: the
service's image (deploy/kubernetes/Dockerfile, built by tools/proof/kube_image.py) and the demo Redis's and
Zipkin's images, made here, go into the node's containerd under the names deploy/kubernetes/manifests/
gives them. The node has no storage provisioner, so it also makes the one PersistentVolume the demo
Redis claims (deploy/kubernetes/node/host-volume.yaml). `make kube-shell` opens a shell in the node's
network namespace with `kubectl` and `helm` on its PATH, where the commands of docs/kubernetes.md run
as they are typed; the processes it leaves (a `kubectl port-forward ... &`) end with it.

The scripted LLM listens in that namespace too, at the endpoint of deploy/kubernetes/node/llm-scripted.yaml
(scripted_llm_on_node): in the tests' process while they run, in the shell's while it runs.

    python -m tools.kube.app load | shell [-c COMMANDS]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from tools.kube import node
from tools.stack.settings import FACTS, ROOT, ZIPKIN_JAR

MANIFESTS = ROOT / "deploy/kubernetes/manifests"
LLM_COMPONENT = ROOT / "deploy/kubernetes/node/llm-scripted.yaml"
DEMO_BASE_IMAGE = f"localhost/tda-demo-base:{FACTS['KUBE_IMAGE_DEBIAN_SUITE']}"  # scripts/install-kube-image.sh
REDIS_UID = 999  # the demo Redis's runAsUser


def manifest_image(file: str) -> str:
    """The image a manifest names, as containerd stores it ("redis:7.4" is docker.io/library/redis:7.4)."""
    name = re.search(r"^\s+image:\s*(\S+)", (MANIFESTS / file).read_text(), re.M).group(1)
    if "/" not in name:
        name = f"library/{name}"
    return name if "." in name.split("/")[0] else f"docker.io/{name}"


SERVICE_IMAGE = manifest_image("durable-agent-service.yaml")
REDIS_IMAGE = manifest_image("redis-demo.yaml")
ZIPKIN_IMAGE = manifest_image("zipkin-demo.yaml")


def llm_endpoint() -> tuple[str, int]:
    """The scripted LLM's address on the node, as the component the pods load names it."""
    url = urlsplit(re.search(r"value:\s*(http://\S+)", LLM_COMPONENT.read_text()).group(1))
    return url.hostname, url.port


# --- images ---------------------------------------------------------------------------------
def build(name: str, containerfile: str, context: Path) -> None:
    from tools.proof import kube_image

    context.mkdir(parents=True, exist_ok=True)
    (context / "Containerfile").write_text(containerfile)
    result = node.run(kube_image.buildah("bud", "--layers", "--pull=never", "--network=none",
                                         *kube_image.RUNTIME_FLAGS, "-f", str(context / "Containerfile"), "-t", name,
                                         str(context)), netns=False)
    if result.returncode != 0:
        raise node.NodeError(f"buildah could not build {name}: {result.stderr.strip()[-800:]}")


def build_demo_images() -> tuple[str, str]:
    """Redis and Zipkin on the demo base (Debian bookworm's redis-server, Java 17): not the images the
    manifests pull elsewhere (redis:7.4 holds Redis 7.4; Debian's is 7.0), but the same commands run in them."""
    from tools.proof import kube_image

    if kube_image.image_id(DEMO_BASE_IMAGE) is None:
        raise node.NodeError(f"no {DEMO_BASE_IMAGE}: run `bash scripts/install-kube-image.sh`")
    if not ZIPKIN_JAR.exists():
        raise node.NodeError(f"no Zipkin jar at {ZIPKIN_JAR}: run `bash scripts/install-zipkin.sh`")
    work = node.STATE / "images"
    redis, zipkin = "localhost/tda-demo-redis:1", "localhost/tda-demo-zipkin:1"
    build(redis, f"FROM {DEMO_BASE_IMAGE}\nCMD [\"redis-server\"]\n", work / "redis")
    jar = work / "zipkin" / "zipkin.jar"
    jar.parent.mkdir(parents=True, exist_ok=True)
    if not jar.exists() or jar.stat().st_size != ZIPKIN_JAR.stat().st_size:
        shutil.copy2(ZIPKIN_JAR, jar)
    build(zipkin, f"FROM {DEMO_BASE_IMAGE}\nCOPY zipkin.jar /zipkin/zipkin.jar\nUSER 1000:1000\nEXPOSE 9411\n"
                  'ENTRYPOINT ["java", "-jar", "/zipkin/zipkin.jar"]\n', work / "zipkin")
    return redis, zipkin


def load_image(source: str, *names: str) -> None:
    """`source`, from buildah's store, into containerd once per content (the copy is named by the image's
    id), then tagged with each of `names`."""
    from tools.proof import kube_image

    copy = f"localhost/tda-loaded:{kube_image.image_id(source)[:16]}"
    if copy not in node.run(node.ctr("images", "ls", "-q")).stdout.split():
        node.run(kube_image.buildah("tag", source, copy), netns=False)
        node.copy_into_containerd(copy)
    for name in names:
        node.run(node.ctr("images", "rm", name))
        result = node.run(node.ctr("images", "tag", copy, name))
        if result.returncode != 0:
            raise node.NodeError(f"ctr images tag {name}: {result.stderr.strip()}")


def load() -> None:
    from tools.proof import kube_image

    if not node.node_ready():
        raise node.NodeError("the node is not Ready: run `make kube-up` first")
    service, _ = kube_image.build(ROOT)
    load_image(service, SERVICE_IMAGE)
    redis, zipkin = build_demo_images()
    load_image(redis, REDIS_IMAGE)
    load_image(zipkin, ZIPKIN_IMAGE)
    node.host_volume("data-redis-0", "default", REDIS_UID, "1Gi")  # the demo Redis's claim


# --- the shell --------------------------------------------------------------------------------
def shell_env() -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(node.STATE / "admin.kubeconfig"),
            "PATH": f"{node.NODE_BIN}:{node.CHECK_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PS1": r"(tda-node) \w \$ "}


def end_session(leader: int) -> None:
    """Every process still in the shell's session: what it put in the background."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if process.pid != leader and os.getsid(process.pid) == leader:
                process.send_signal(signal.SIGKILL)


def shell(commands: str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """bash in the node's network namespace, at the repository's root: `commands` (stopping at the first
    that fails, output captured), or an interactive one. What it leaves running is stopped after it."""
    argv = ["bash", "--norc", "-euo", "pipefail", "-c", commands] if commands is not None else ["bash", "--norc", "-i"]
    # Files, not pipes, for the output: a `kubectl port-forward ... &` would hold a pipe open after bash ended.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        captured = {"stdout": out, "stderr": err} if commands is not None else {}
        process = subprocess.Popen(node.in_netns(argv), cwd=ROOT, env=shell_env(), start_new_session=True, text=True,
                                   **captured)
        try:
            process.wait(timeout=timeout)
        finally:
            end_session(process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, process.returncode, out.read(), err.read())


@contextlib.contextmanager
def scripted_llm_on_node() -> Iterator:
    """The scripted LLM (tools/stack/scripted_llm.py), listening in the node's network namespace at the endpoint
    deploy/kubernetes/node/llm-scripted.yaml gives the pods."""
    from tools.stack.scripted_llm import ScriptedLLM

    host, port = llm_endpoint()
    llm = node.in_node_network(lambda: ScriptedLLM(host=host, port=port).start())
    try:
        yield llm
    finally:
        llm.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kube.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["load", "shell"])
    parser.add_argument("-c", dest="commands", help="run these commands instead of an interactive shell")
    args = parser.parse_args(argv)
    try:
        if args.command == "load":
            load()
            print(f"[kube] loaded into the node: {SERVICE_IMAGE}, {REDIS_IMAGE}, {ZIPKIN_IMAGE}; "
                  "the demo Redis's volume ready")
        else:
            if not node.node_ready():
                raise node.NodeError("the node is not Ready: run `make kube-up` first")
            with contextlib.ExitStack() as llm:
                try:  # the LLM deploy/kubernetes/node/llm-scripted.yaml names, for as long as the shell runs
                    served = llm.enter_context(scripted_llm_on_node()).endpoint
                except RuntimeError:  # another shell, or a test, serves it already
                    served = f"{llm_endpoint()[0]}:{llm_endpoint()[1]}, served by another shell or a test"
                if args.commands is None:
                    print(f"[kube] a shell in the node's network namespace: kubectl and helm reach the node, the "
                          f"scripted LLM answers at {served}; `exit` ends it and what it started")
                result = shell(args.commands)
            if args.commands is not None:
                sys.stdout.write(result.stdout)
                sys.stderr.write(result.stderr)
            return result.returncode
    except node.NodeError as exc:
        print(f"[kube] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
