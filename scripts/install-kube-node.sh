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
. "$(dirname "$0")/lib.sh"   # the facts (tools/stack/stack.env), TDA_HOME, say/die/step

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

mkdir -p "$TDA_HOME"
exec 9>"$TDA_HOME/.install-kube-node.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
  step /dev/null "kubernetes node: waiting for another set-up's build to finish" flock 9
fi
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

module_dir() {  # the directory `go mod download` put a module in
  local json
  json="$(go mod download -json "$1")" || { printf '%s\ncould not download %s\n' "$json" "$1" >&2; return 1; }
  printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

src="$TDA_HOME/src/kube-node-$KUBERNETES_VERSION"

# As scripts/install-kube-check.sh does for kube-apiserver: in a writable copy of the module, the
# ./staging replace lines become requirements of the published k8s.io/* modules of the same release.
build_node_binaries() {
  local dir staging="v0.${KUBERNETES_VERSION#1.}" module
  dir="$(module_dir "k8s.io/kubernetes@v$KUBERNETES_VERSION")"
  rm -rf "$src/kubernetes" && mkdir -p "$src"
  cp -r "$dir" "$src/kubernetes" && chmod -R u+w "$src/kubernetes"
  cd "$src/kubernetes"
  rm -rf vendor go.work go.work.sum
  for module in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' go.mod); do
    go mod edit -dropreplace "$module"
  done
  for module in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) v0\.0\.0$#\1#p' go.mod); do
    go mod edit -require "$module@$staging"
  done
  local v="k8s.io/component-base/version" command
  for command in "${COMMANDS[@]}"; do
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w -X $v.gitVersion=v$KUBERNETES_VERSION \
      -X $v.gitMajor=${KUBERNETES_VERSION%%.*} -X $v.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) \
      -X $v.gitTreeState=clean" -o "$PREFIX/bin/$command" "./cmd/$command"
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
