#!/usr/bin/env bash
# Builds Dapr's Kubernetes control plane and sidecar for the node of `make kube-up`: operator, injector
# (the sidecar injector), sentry, placement, scheduler and daprd of github.com/dapr/dapr at the pinned
# runtime version, from the Go module cache, unpatched (scripts/install-dapr.sh patches its daprd for this
# machine's loopback stack and builds it slim; in a pod the chart's probes reach the health servers on the
# pod's address, and a user's sidecar needs every component: the `allcomponents` build, as Dapr's release).
# tools/kube/dapr.py makes the images of them that the dapr/dapr chart names and installs the chart.
#
# The result lands in the per-machine cache, keyed by version:
#   $TDA_HOME/kube-dapr-<dapr>/bin/{operator,injector,sentry,placement,scheduler,daprd}
#   $TDA_HOME/kube-dapr-<dapr>/.complete   (written last: what it was built for)
# A build that is there and whole returns at once and prints nothing. Go's output goes to
# $TDA_HOME/logs/build-kube-dapr-<dapr>.log, the timings to build-kube-dapr-<dapr>.times.json.
set -euo pipefail
TAG=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"   # the facts (tools/stack/stack.env), TDA_HOME, say/die/step, the Go build steps

VERSION="$DAPR_RUNTIME_VERSION"
PREFIX="$TDA_HOME/kube-dapr-$VERSION"
COMMANDS=(operator injector sentry placement scheduler daprd)
STAMP="dapr=$VERSION commands=${COMMANDS[*]} daprd-tags=allcomponents"
LOG="$TDA_HOME/logs/build-kube-dapr-$VERSION.log"

[ "$(cat "$PREFIX/.complete" 2>/dev/null)" = "$STAMP" ] && exit 0

export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-buildvcs=false
command -v go >/dev/null 2>&1 \
  || die "Go is not installed, and Dapr's Kubernetes images hold binaries built with it (once per machine). Install Go >= $GO_MIN_VERSION."

take_build_lock kube-dapr "dapr for kubernetes"   # lib.sh
[ "$(cat "$PREFIX/.complete" 2>/dev/null)" = "$STAMP" ] && exit 0

# Built inside the module's own directory (read-only: nothing is written there), with its go.mod and go.sum
# as they are: the versions Dapr's release was built with. The version flags are those of Dapr's Makefile.
build_command() {
  local command="$1" dir tags=()
  dir="$(go_module_dir "github.com/dapr/dapr@v$VERSION")"
  [ "$command" = daprd ] && tags=(-tags=allcomponents)
  cd "$dir"
  go build "${tags[@]}" -ldflags "-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=$VERSION \
    -X github.com/dapr/kit/logger.DaprVersion=$VERSION" -o "$PREFIX/bin/$command" "./cmd/$command"
}

start_record "$LOG"
started=$SECONDS
rm -f "$PREFIX/.complete"
mkdir -p "$PREFIX/bin" "$(dirname "$LOG")" && : > "$LOG"
say "dapr for kubernetes: ${COMMANDS[*]} $VERSION built once per machine (minutes); log: $LOG"
for command in "${COMMANDS[@]}"; do
  timed "dapr for kubernetes: building $command $VERSION" build_command "$command"
done
write_record "dapr ${COMMANDS[*]} $VERSION for kubernetes" "$((SECONDS - started))"
echo "$STAMP" > "$PREFIX/.complete"
say "dapr for kubernetes: ready in $PREFIX ($((SECONDS - started)) s in all)"
