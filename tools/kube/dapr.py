"""Dapr on the node of `make kube-up`, installed by its own Helm chart: `make kube-dapr`.

The chart is dapr/dapr at the pinned runtime version (the copy scripts/install-kube-check.sh keeps), with
deploy/kubernetes/dapr-values.yaml (HA: three replicas of each control-plane service) and then
deploy/kubernetes/node/dapr-node-values.yaml (what this node needs: nothing pulled, no volume claims).
The images the chart names, ghcr.io/dapr/<service>:<version>, are made here: one image `FROM scratch`
holding the six binaries of scripts/install-kube-dapr.sh and the machine's CA bundle, tagged under each
name, imported into the node's containerd. `--no-ha` installs one replica of each instead.

    python -m tools.kube.dapr install [--no-ha] | images | uninstall
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.kube import node
from tools.stack.settings import FACTS, ROOT, TDA_HOME

VERSION = FACTS["DAPR_RUNTIME_VERSION"]
CHART = TDA_HOME / f"kube-check-{FACTS['KUBERNETES_VERSION']}" / f"dapr-{VERSION}" / "charts" / "dapr"
HELM = node.CHECK_BIN / "helm"
BIN = TDA_HOME / f"kube-dapr-{VERSION}" / "bin"
COMMANDS = ["operator", "injector", "sentry", "placement", "scheduler", "daprd"]
REGISTRY = "ghcr.io/dapr"  # the chart's global.registry, kept: the images carry the names the chart gives
IMAGES = [f"{REGISTRY}/{command}:{VERSION}" for command in COMMANDS]
VALUES = [ROOT / "deploy/kubernetes/dapr-values.yaml", ROOT / "deploy/kubernetes/node/dapr-node-values.yaml"]
NAMESPACE = "dapr-system"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's ca-certificates: daprd's calls out of the cluster
CONTROL_PLANE_UID = 65532  # non-root and numeric, as the chart's runAsNonRoot requires (Dapr's images use the same)
USER = f"{CONTROL_PLANE_UID}:{CONTROL_PLANE_UID}"


def missing() -> list[str]:
    parts = [*(BIN / command for command in COMMANDS), CHART, HELM]
    return [str(part) for part in parts if not part.exists()]


def build_images() -> None:
    """One image of the six binaries, under the six names; buildah's layer cache makes a rebuild a no-op."""
    from tools.proof import kube_image

    work = node.STATE / "images" / f"dapr-{VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    for command in COMMANDS:
        if not (work / command).exists() or (work / command).stat().st_mtime < (BIN / command).stat().st_mtime:
            shutil.copy2(BIN / command, work / command)
    shutil.copy2(CA_BUNDLE, work / "ca-certificates.crt")
    copies = "".join(f"COPY {command} /{command}\n" for command in COMMANDS)
    (work / "Containerfile").write_text(f"FROM scratch\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
                                        f"{copies}USER {USER}\n")
    tags = [flag for image in IMAGES for flag in ("-t", image)]
    result = node.run(kube_image.buildah("bud", "--layers", "--pull=never", "--network=none",
                                         *kube_image.RUNTIME_FLAGS, "-f", str(work / "Containerfile"), *tags,
                                         str(work)), netns=False)
    if result.returncode != 0:
        raise node.NodeError(f"buildah could not build Dapr's image: {result.stderr.strip()[-800:]}")


def import_images() -> None:
    """The first name through an OCI archive into containerd, the others as tags of it (no second copy)."""
    node.copy_into_containerd(IMAGES[0])
    for image in IMAGES[1:]:
        node.run(node.ctr("images", "rm", image))
        result = node.run(node.ctr("images", "tag", IMAGES[0], image))
        if result.returncode != 0:
            raise node.NodeError(f"ctr images tag {image}: {result.stderr.strip()}")


def helm(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return node.run([str(HELM), "--kubeconfig", str(node.STATE / "admin.kubeconfig"), *args], timeout=timeout,
                    env={"HOME": str(node.STATE / "helm"), "PATH": "/usr/bin:/bin"})


def install(ha: bool = True, timeout_s: int = 900) -> float:
    """`helm upgrade --install` of the chart, waiting until every control-plane pod is Ready; the seconds taken."""
    if gaps := missing():
        raise node.NodeError(f"missing: {', '.join(gaps)}: run `bash scripts/install-kube-dapr.sh` and "
                             "`bash scripts/install-kube-check.sh`")
    if not node.node_ready():
        raise node.NodeError("the node is not Ready: run `make kube-up` first")
    started = time.monotonic()
    for replica in range(3):  # the claims of the chart's placement and scheduler StatefulSets (three each)
        node.host_volume(f"raft-log-dapr-placement-server-{replica}", NAMESPACE, CONTROL_PLANE_UID, "1Gi")
        node.host_volume(f"dapr-scheduler-data-dir-dapr-scheduler-server-{replica}", NAMESPACE, CONTROL_PLANE_UID,
                         "16Gi")
    build_images()
    import_images()
    imported = time.monotonic()
    values = [flag for path in VALUES for flag in ("-f", str(path))]
    if not ha:
        values += ["--set", "global.ha.enabled=false"]
    (node.STATE / "helm").mkdir(parents=True, exist_ok=True)
    result = helm("upgrade", "--install", "dapr", str(CHART), "--namespace", NAMESPACE, "--create-namespace",
                  *values, "--wait", f"--timeout={timeout_s}s", timeout=timeout_s + 60)
    if result.returncode != 0:
        pods = node.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").stdout
        raise node.NodeError(f"helm install of dapr {VERSION}: {result.stderr.strip()}\n{pods}")
    print(f"[kube] dapr {VERSION} images built and imported in {imported - started:.0f} s, "
          f"chart installed ({'HA' if ha else 'one replica each'}) and Ready in {time.monotonic() - imported:.0f} s")
    return time.monotonic() - started


def uninstall() -> None:
    helm("uninstall", "dapr", "--namespace", NAMESPACE, "--wait", "--timeout=120s", timeout=180)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kube.dapr", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["install", "images", "uninstall"])
    parser.add_argument("--no-ha", action="store_true", help="one replica of each control-plane service")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(ha=not args.no_ha)
        elif args.command == "images":
            build_images()
            import_images()
        else:
            uninstall()
    except node.NodeError as exc:
        print(f"[kube] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
