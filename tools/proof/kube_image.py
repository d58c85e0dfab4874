"""The service's container image, built from deploy/kubernetes/Dockerfile by a real OCI builder.

No Docker engine and no registry here: buildah (Debian's package) builds the Dockerfile as it is,
`FROM python:3.11-slim` resolved to a base image made on this machine by scripts/install-kube-image.sh
(a Debian bookworm root filesystem by mmdebstrap, whose Python is 3.11, with a virtualenv at /usr/local
so that `pip install` works as in the official image). The build runs without network: the
requirements' wheels are downloaded on the host first (the same script), and the build's RUN steps see
them through a read-only mount and a pip configuration that points pip there. podman runs the result.

Everything lives outside the clone, in $TDA_HOME/kube-image: the image store, the wheels, the records.
An image is tagged by a hash of what went into it (the Dockerfile, its ignore file, the files its COPY
lines name, the base image), so a second build of the same inputs is skipped, and a build from changed
inputs reuses buildah's cached layers (the `pip install` layer stays as long as requirements.txt does).

    python -m tools.proof.kube_image build [--context DIR] [--tag NAME]   # prints the image's name
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tools.stack.settings import FACTS, ROOT, TDA_HOME

STORE = TDA_HOME / "kube-image"
DOCKERFILE = Path("deploy/kubernetes/Dockerfile")  # relative to the build context, the repository's root
BASE_IMAGE = f"localhost/python:{FACTS['PYTHON_MIN_VERSION']}-slim"  # what the Dockerfile's FROM resolves to
IMAGE_NAME = "localhost/tiny-durable-agent"
# runc, not crun (podman's default), which refuses cgroup v1 controllers beside a cgroup2 mount:
# "cgroups in hybrid mode not supported". The ulimits are lowered below the current ones: without
# CAP_SYS_RESOURCE no runtime may raise a limit, and podman's default asks for more than we have.
RUNTIME_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]
WHEELS_IN_BUILD = "/wheels"


class ImageError(RuntimeError):
    """The image could not be built or run; the message says what to do."""


def storage_flags() -> list[str]:
    """buildah's and podman's shared image store: ours, not the machine's default one."""
    return ["--root", str(STORE / "storage"), "--runroot", "/run/tiny-durable-agent-kube-image",
            "--storage-driver", "overlay"]


def podman(*args: str) -> list[str]:
    return ["podman", *storage_flags(), "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args]


def buildah(*args: str) -> list[str]:
    return ["buildah", *storage_flags(), *args]


def requirements_key(context: Path = ROOT) -> str:
    return hashlib.sha256((context / "requirements.txt").read_bytes()).hexdigest()[:16]


def wheelhouse(context: Path = ROOT) -> Path:
    """The requirements' wheels, downloaded on the host by scripts/install-kube-image.sh."""
    return STORE / f"wheels-{requirements_key(context)}"


def copied_sources(dockerfile: Path) -> list[str]:
    """The build-context files the Dockerfile's COPY lines name."""
    return [source for line in re.findall(r"^COPY (.+)$", dockerfile.read_text(), re.M)
            for source in line.split()[:-1] if not source.startswith("--")]


def image_id(name: str) -> str | None:
    result = subprocess.run(podman("image", "inspect", "--format", "{{.Id}}", name), capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def inputs_hash(context: Path = ROOT) -> str:
    """What the image is made of: the Dockerfile, its ignore file, the files it copies, the base image."""
    dockerfile = context / DOCKERFILE
    digest = hashlib.sha256()
    base = image_id(BASE_IMAGE)
    if base is None:
        raise ImageError(f"no base image {BASE_IMAGE} in {STORE / 'storage'}: run `bash scripts/install-kube-image.sh`")
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    for part in (dockerfile, ignore, *(context / source for source in copied_sources(dockerfile))):
        digest.update(str(part.relative_to(context)).encode() + b"\0")
        digest.update(part.read_bytes() if part.is_file() else b"<missing>")
    digest.update(base.encode())
    return digest.hexdigest()[:16]


def build(context: Path = ROOT, tag: str | None = None, log: Path | None = None) -> tuple[str, float]:
    """The image of `context`'s Dockerfile, built unless one from the same inputs is there; its name and the
    seconds the build took (0.0 when skipped). `tag`: a further name for it (e.g. the manifest's)."""
    context = context.resolve()
    wheels = wheelhouse(context)
    if not (wheels / ".complete").is_file():
        raise ImageError(f"no wheels for this requirements.txt in {wheels}: run `bash scripts/install-kube-image.sh`")
    name = f"{IMAGE_NAME}:in-{inputs_hash(context)}"
    started, built = time.monotonic(), image_id(name) is None
    if built:
        argv = buildah("bud", "--layers", "--pull=never", "--network=none", *RUNTIME_FLAGS,
                       "-v", f"{wheels}:{WHEELS_IN_BUILD}:ro", "-v", f"{wheels / 'pip.conf'}:/etc/pip.conf:ro",
                       "-f", str(context / DOCKERFILE), "-t", name, str(context))
        output = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(" ".join(argv) + "\n" + output.stdout + output.stderr)
        if output.returncode != 0:
            raise ImageError(f"buildah could not build {DOCKERFILE} (exit {output.returncode}):\n"
                             + "\n".join((output.stdout + output.stderr).splitlines()[-15:]))
    seconds = time.monotonic() - started if built else 0.0
    if tag:
        subprocess.run(buildah("tag", name, tag), check=True, capture_output=True)
    return name, round(seconds, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.proof.kube_image", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("build", help="build the image (skipped when built from the same inputs)")
    make.add_argument("--context", type=Path, default=ROOT)
    make.add_argument("--tag", help="a further name for the image, e.g. tiny-durable-agent:local")
    args = parser.parse_args(argv)
    try:
        name, seconds = build(args.context, args.tag, log=TDA_HOME / "logs" / "build-kube-image-buildah.log")
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{name} ({f'built in {seconds:.1f} s' if seconds else 'already built from the same inputs'})")
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    raise SystemExit(main())
