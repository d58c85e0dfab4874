#!/usr/bin/env bash
# Builds the parts of a one-machine Kubernetes node that scripts/install-kube-check.sh does not:
# kubelet, kube-controller-manager, kube-scheduler, kube-proxy and kubectl from k8s.io/kubernetes (Go module
# proxy, the same release as the check's kube-apiserver), and installs Debian's containerd (the
# container runtime kubelet talks CRI to) and CNI plugins. docs/kubernetes.md says which of these
# ran and which did not.
#
# The result lands in the per-machine cache, keyed by version:
#   $TDA_HOME/kube-node-<kubernetes>/bin/{kubelet,kube-controller-manager,kube-scheduler,kube-proxy,kubectl,coredns}
#   $TDA_HOME/kube-node-<kubernetes>/.complete   (written last: the versions it was built for)
# A build that is there and whole returns at once and prints nothing. Go's output goes to
# $TDA_HOME/logs/build-kube-node-<kubernetes>.log, the timings to build-kube-node-<kubernetes>.times.json.
set -euo pipefail
TAG=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"   # the facts (tools/stack/stack.env), TDA_HOME, say/die/step, the Go build steps

PREFIX="$TDA_HOME/kube-node-$KUBERNETES_VERSION"
COMMANDS=(kubectl kube-scheduler kube-controller-manager kubelet kube-proxy)
STAMP="kubernetes=$KUBERNETES_VERSION commands=${COMMANDS[*]} coredns=$COREDNS_VERSION"
LOG="$TDA_HOME/logs/build-kube-node-$KUBERNETES_VERSION.log"
PACKAGES=(containerd containernetworking-plugins runc iptables gcc libc6-dev)  # gcc, libc6-dev: the static pause binary

missing_packages() {
  local package
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' || echo "$package"
  done
}

[ "$(cat "$PREFIX/.complete" 2>/dev/null)" = "$STAMP" ] && [ -z "$(missing_packages)" ] && exit 0

export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-buildvcs=false
command -v go >/dev/null 2>&1 \
  || die "Go is not installed, and the Kubernetes node builds kubelet and its peers with it (once per machine). Install Go >= $GO_MIN_VERSION."

take_build_lock kube-node "kubernetes node"   # lib.sh
[ "$(cat "$PREFIX/.complete" 2>/dev/null)" = "$STAMP" ] && [ -z "$(missing_packages)" ] && exit 0

install_packages() {
  local missing
  missing="$(missing_packages)"
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] || { echo "not root: install them with: sudo apt-get install -y $missing" >&2; return 1; }
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
  # The package starts containerd as a system service; the node starts its own, on its own socket.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now containerd 2>/dev/null || true; fi
}

src="$TDA_HOME/src/kube-node-$KUBERNETES_VERSION"

# As scripts/install-kube-check.sh does for kube-apiserver: from a writable copy of the module whose
# ./staging replace lines became requirements of the published k8s.io/* modules of the same release.
build_node_binaries() {
  local command
  kubernetes_module_copy "$src/kubernetes"
  cd "$src/kubernetes"
  for command in "${COMMANDS[@]}"; do
    kubernetes_build "$PREFIX/bin/$command" "./cmd/$command"
  done
  cd / && rm -rf "$src/kubernetes"
}

# CoreDNS, the cluster's DNS (Services' names): its main package, from a module that requires it.
build_coredns() {
  rm -rf "$src/coredns" && mkdir -p "$src/coredns" && cd "$src/coredns"
  go mod init tiny-durable-agent/coredns
  go mod edit -require "github.com/coredns/coredns@v$COREDNS_VERSION"
  GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$PREFIX/bin/coredns" github.com/coredns/coredns
  cd / && rm -rf "$src/coredns"
}

start_record "$LOG"
started=$SECONDS
rm -f "$PREFIX/.complete"
mkdir -p "$PREFIX/bin" "$(dirname "$LOG")" && : > "$LOG"
say "kubernetes node: Debian's ${PACKAGES[*]}, and ${COMMANDS[*]} $KUBERNETES_VERSION built once per machine (minutes); log: $LOG"
timed "kubernetes node: Debian's ${PACKAGES[*]}" install_packages
timed "kubernetes node: building ${COMMANDS[*]} $KUBERNETES_VERSION" build_node_binaries
timed "kubernetes node: building coredns $COREDNS_VERSION" build_coredns
rmdir "$src" 2>/dev/null || true
write_record "${COMMANDS[*]} $KUBERNETES_VERSION, coredns $COREDNS_VERSION" "$((SECONDS - started))"
echo "$STAMP" > "$PREFIX/.complete"
say "kubernetes node: ready in $PREFIX ($((SECONDS - started)) s in all)"
