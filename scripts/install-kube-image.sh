#!/usr/bin/env bash
# What building deploy/kubernetes/Dockerfile needs on a machine without Docker or a registry, and a
# first build of it (tools/proof/kube_image.py; tests/test_kube_image.py builds and runs it again):
#   1. Debian's buildah, podman and runc (the OCI builder and runtime) and mmdebstrap;
#   2. the base image the Dockerfile's `FROM python:3.11-slim` names, made here: a Debian root
#      filesystem by mmdebstrap (bookworm: Python 3.11) with a virtualenv at /usr/local, so that
#      `python` and `pip install` work as in the official image, imported and tagged by podman;
#   3. the requirements' wheels, downloaded on the host by pip (the build itself has no network);
#   4. the image, tagged as the manifest names it (tiny-durable-agent:local);
#   5. the base of the demo Redis's and Zipkin's images (tools/kube/app.py builds them on it): a
#      Debian root filesystem with redis-server and Java 17, imported as localhost/tda-demo-base.
# Everything lands in $TDA_HOME/kube-image, keyed by what it was made from; a part that is there
# returns at once. The log is $TDA_HOME/logs/build-kube-image.log, the timings build-kube-image.times.json.
set -euo pipefail
TAG=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"   # the facts (tools/stack/stack.env), TDA_HOME, say/die/step

ROOT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT_DIR/.venv/bin/python"
STORE="$TDA_HOME/kube-image"
LOG="$TDA_HOME/logs/build-kube-image.log"
PACKAGES=(buildah podman runc mmdebstrap)
BASE_STAMP="suite=$KUBE_IMAGE_DEBIAN_SUITE packages=$KUBE_IMAGE_BASE_PACKAGES"
BASE_IMAGE="localhost/python:$PYTHON_MIN_VERSION-slim"
DEMO_STAMP="suite=$KUBE_IMAGE_DEBIAN_SUITE packages=$KUBE_DEMO_PACKAGES"
DEMO_BASE_IMAGE="localhost/tda-demo-base:$KUBE_IMAGE_DEBIAN_SUITE"

[ -x "$PY" ] || die "no virtualenv at $PY: run \`make setup\` first"
missing_packages() {
  local package
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' || echo "$package"
  done
}
wheels() { "$PY" -c 'from tools.proof.kube_image import wheelhouse; print(wheelhouse())'; }
base_ready() { [ "$(cat "$STORE/.base-complete" 2>/dev/null)" = "$BASE_STAMP" ]; }
demo_base_ready() { [ "$(cat "$STORE/.demo-base-complete" 2>/dev/null)" = "$DEMO_STAMP" ]; }
all_ready() {
  [ -z "$(missing_packages)" ] && base_ready && demo_base_ready && [ -f "$(wheels)/.complete" ] \
    && "$PY" -c 'import sys; from tools.proof.kube_image import *; sys.exit(image_id(f"{IMAGE_NAME}:in-{inputs_hash()}") is None)' 2>/dev/null
}

cd "$ROOT_DIR"
all_ready && exit 0
mkdir -p "$STORE" "$(dirname "$LOG")"
exec 9>"$TDA_HOME/.install-kube-image.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
  step /dev/null "container image: waiting for another set-up's build to finish" flock 9
fi
all_ready && exit 0

install_packages() {
  local missing
  missing="$(missing_packages)"
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] || { echo "not root: install them with: sudo apt-get install -y $missing" >&2; return 1; }
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
}

make_base_image() {
  local tar="$STORE/rootfs-$KUBE_IMAGE_DEBIAN_SUITE.tar"
  mmdebstrap --variant=minbase --include="$KUBE_IMAGE_BASE_PACKAGES" \
    --customize-hook='chroot "$1" python3 -m venv /usr/local' \
    --customize-hook='chroot "$1" /usr/local/bin/python -m pip --version' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    "$KUBE_IMAGE_DEBIAN_SUITE" "$tar"
  podman --root "$STORE/storage" --runroot /run/tiny-durable-agent-kube-image --storage-driver overlay \
    import --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tar" "$BASE_IMAGE"
  rm -f "$tar"
  echo "$BASE_STAMP" > "$STORE/.base-complete"
}

make_demo_base_image() {
  local tar="$STORE/demo-rootfs-$KUBE_IMAGE_DEBIAN_SUITE.tar"
  mmdebstrap --variant=minbase --include="$KUBE_DEMO_PACKAGES" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    "$KUBE_IMAGE_DEBIAN_SUITE" "$tar"
  podman --root "$STORE/storage" --runroot /run/tiny-durable-agent-kube-image --storage-driver overlay \
    import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' "$tar" "$DEMO_BASE_IMAGE"
  rm -f "$tar"
  echo "$DEMO_STAMP" > "$STORE/.demo-base-complete"
}

download_wheels() {
  local dir
  dir="$(wheels)"
  rm -rf "$dir" && mkdir -p "$dir"
  # The host's Python is the image's (3.11 on glibc >= 2.36): its wheels fit.
  "$PY" -m pip download --only-binary=:all: -r requirements.txt -d "$dir"
  printf '[global]\nno-index = true\nfind-links = /wheels\n' > "$dir/pip.conf"
  touch "$dir/.complete"
}

build_image() { "$PY" -m tools.proof.kube_image build --tag "$KUBE_SERVICE_IMAGE"; }

start_record "$LOG"
started=$SECONDS
say "container image: buildah and podman, a base image made by mmdebstrap, the wheels, then the image (minutes, once); log: $LOG"
timed "container image: Debian's ${PACKAGES[*]}" install_packages
base_ready || timed "container image: base image $BASE_IMAGE from Debian $KUBE_IMAGE_DEBIAN_SUITE by mmdebstrap" make_base_image
[ -f "$(wheels)/.complete" ] || timed "container image: the requirements' wheels, by pip download" download_wheels
timed "container image: buildah builds deploy/kubernetes/Dockerfile" build_image
demo_base_ready || timed "container image: the demo Redis's and Zipkin's base $DEMO_BASE_IMAGE by mmdebstrap" \
  make_demo_base_image
write_record "the service's container image" "$((SECONDS - started))"
say "container image: ready in $STORE, $KUBE_SERVICE_IMAGE ($((SECONDS - started)) s in all)"
