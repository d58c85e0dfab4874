#!/usr/bin/env bash
# Builds what tests/test_kubernetes.py checks deploy/kubernetes/ with: a real
# kube-apiserver and etcd (the manifests are dry-run against them) and Helm
# (it renders the dapr/dapr chart with deploy/kubernetes/dapr-values.yaml).
# No cluster, no Docker, no GitHub download: everything comes from the Go
# module proxy, at the versions in tools/stack/stack.env.
#
# The result lands in the per-machine cache, keyed by version, like the runtime:
#   $TDA_HOME/kube-check-<kubernetes>/bin/{kube-apiserver,etcd,helm}
#   $TDA_HOME/kube-check-<kubernetes>/dapr-<runtime>/charts/dapr/   the chart and its CRDs
#   $TDA_HOME/kube-check-<kubernetes>/dapr-<runtime>/annotations.go the sidecar annotations
#   $TDA_HOME/kube-check-<kubernetes>/.complete   (written last: the versions it was built for)
# A build that is there and whole returns at once and prints nothing. Go's
# output goes to $TDA_HOME/logs/build-kube-check-<kubernetes>.log, the timings to
# build-kube-check-<kubernetes>.times.json beside it.
set -euo pipefail
TAG=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"   # the facts (tools/stack/stack.env), TDA_HOME, say/die/step, the Go build steps

PREFIX="$TDA_HOME/kube-check-$KUBERNETES_VERSION"   # tools/proof/kube_check.py: PREFIX
STAMP="kubernetes=$KUBERNETES_VERSION etcd=$ETCD_VERSION helm=$HELM_VERSION dapr=$DAPR_RUNTIME_VERSION"
LOG="$TDA_HOME/logs/build-kube-check-$KUBERNETES_VERSION.log"

[ "$(cat "$PREFIX/.complete" 2>/dev/null)" = "$STAMP" ] && exit 0

# GOTOOLCHAIN=local: never let `go` fetch another toolchain behind our back.
# GOWORK=off: the Kubernetes module ships a go.work that names its staging folders.
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-buildvcs=false
command -v go >/dev/null 2>&1 \
  || die "Go is not installed, and the Kubernetes check builds kube-apiserver, etcd and helm with it (once per machine). Install Go >= $GO_MIN_VERSION, then run \`make test\` again."

take_build_lock kube-check "kubernetes check"   # lib.sh
[ "$(cat "$PREFIX/.complete" 2>/dev/null)" = "$STAMP" ] && exit 0

src="$TDA_HOME/src/kube-check-$KUBERNETES_VERSION"

# k8s.io/kubernetes, in a writable copy whose ./staging replace lines became requirements of the
# published k8s.io/* modules of the same release (lib.sh: kubernetes_module_copy).
build_apiserver() {
  kubernetes_module_copy "$src/kubernetes"
  cd "$src/kubernetes"
  kubernetes_build "$PREFIX/bin/kube-apiserver" ./cmd/kube-apiserver
  cd / && rm -rf "$src/kubernetes"
}

# etcd's server module has replace lines too (../api and so on); a module
# that merely requires it ignores them and builds its main package.
build_etcd() {
  rm -rf "$src/etcd" && mkdir -p "$src/etcd" && cd "$src/etcd"
  go mod init tiny-durable-agent/etcd
  go mod edit -require "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
  GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$PREFIX/bin/etcd" go.etcd.io/etcd/server/v3
  cd / && rm -rf "$src/etcd"
}

build_helm() {
  GOBIN="$PREFIX/bin" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
}

# The chart, its CRDs and the annotation names, from the runtime's own module.
copy_dapr_sources() {
  local dir out="$PREFIX/dapr-$DAPR_RUNTIME_VERSION"
  dir="$(go_module_dir "github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION")"
  rm -rf "$out" && mkdir -p "$out/charts"
  cp -r "$dir/charts/dapr" "$out/charts/dapr"
  cp "$dir/pkg/injector/annotations/annotations.go" "$out/annotations.go"
  chmod -R u+w "$out"
}

start_record "$LOG"   # this build's timings, kept beside its log (lib.sh); docs/kubernetes.md quotes them

started=$SECONDS
rm -f "$PREFIX/.complete"
mkdir -p "$PREFIX/bin" "$(dirname "$LOG")" && : > "$LOG"
say "kubernetes check: kube-apiserver $KUBERNETES_VERSION, etcd $ETCD_VERSION and helm $HELM_VERSION are built once per machine (minutes: each step prints its time); log: $LOG"
timed "kubernetes check: building kube-apiserver $KUBERNETES_VERSION (1/3)" build_apiserver
timed "kubernetes check: building etcd $ETCD_VERSION (2/3)" build_etcd
timed "kubernetes check: building helm $HELM_VERSION (3/3)" build_helm
timed "kubernetes check: copying the dapr $DAPR_RUNTIME_VERSION chart and CRDs" copy_dapr_sources
rmdir "$src" 2>/dev/null || true
write_record "kube-apiserver $KUBERNETES_VERSION, etcd $ETCD_VERSION and helm $HELM_VERSION" "$((SECONDS - started))"
echo "$STAMP" > "$PREFIX/.complete"
say "kubernetes check: ready in $PREFIX ($((SECONDS - started)) s in all)"
