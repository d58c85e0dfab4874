#!/usr/bin/env bash
# Builds the pinned Dapr runtime (daprd, placement, scheduler, sentry) and the
# dapr CLI from the Go module proxy, because `dapr init` downloads release
# binaries from GitHub and needs Docker; neither is available everywhere.
#
# The result lands in a cache outside the clone, keyed by version and patch set, so every
# clone (and CI) reuses one build:
#   $TDA_HOME/dapr-<runtime>-p<patch set>/.dapr/bin/{daprd,placement,scheduler,sentry}
#       (bin/daprd is a small wrapper around libexec/daprd: see write_daprd_wrapper)
#   $TDA_HOME/dapr-<runtime>-p<patch set>/.dapr/config.yaml  (what `dapr init --slim` writes)
#   $TDA_HOME/dapr-<runtime>-p<patch set>/bin/dapr           (the CLI)
#   $TDA_HOME/dapr-<runtime>-p<patch set>/.complete          (written last: the build is whole, its recipe and patch set)
# <patch set> is a hash of scripts/patches/ (our fixes from Dapr 1.18.3, see scripts/patches/README.md):
# a change of any patch builds into a new folder, and an older build stays usable until it is gone.
# TDA_DAPR_PATCHES=none builds (and tools/stack/runtime.py then runs) the runtime without them, in
# $TDA_HOME/dapr-<runtime>: the switch-offs of tests/test_runtime_fixes.py run on it.
# DAPR_BUILD=slim (the default) compiles only the components this example uses
# (minutes: docs/local-stack.md quotes a recorded build); DAPR_BUILD=full compiles
# every component, like a release build (much longer), into
# $TDA_HOME/dapr-<runtime>-full. tools/stack/runtime.py looks in both folders; a
# full build also serves when a slim one is asked for.
# Versions come from tools/stack/stack.env. The Go output goes to
# $TDA_HOME/logs/build-dapr-<runtime>-<slim|full>.log; each step prints one line, and
# build-dapr-<runtime>-<slim|full>.times.json beside the log keeps the timings.
set -euo pipefail
TAG=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"   # the facts (tools/stack/stack.env), TDA_HOME, say/die/step
DAPR_BUILD="${DAPR_BUILD:-slim}"
PATCHES_DIR="$(cd "$(dirname "$0")" && pwd)/patches"

# The patch set's name: the first 10 hex digits of the SHA-256 of each patch's path (relative to
# scripts/patches) and text, in path order. tools/stack/settings.py computes the same (dapr_patch_set).
patch_files() { (cd "$PATCHES_DIR" && find . -name '*.patch' | LC_ALL=C sort | sed 's|^\./||'); }
patch_set_hash() {
  local f
  patch_files | while read -r f; do printf '%s\n' "$f"; cat "$PATCHES_DIR/$f"; done | sha256sum | cut -c1-10
}
case "${TDA_DAPR_PATCHES:-all}" in
  all) PATCH_SET="$(patch_set_hash)"; FLAVOUR="$DAPR_RUNTIME_VERSION-p$PATCH_SET" ;;
  none) PATCH_SET=none; FLAVOUR="$DAPR_RUNTIME_VERSION" ;;
  *) die "TDA_DAPR_PATCHES must be all (the default: our fixes from Dapr 1.18.3) or none, not '$TDA_DAPR_PATCHES'" ;;
esac

case "$DAPR_BUILD" in
  slim) PREFIX="$TDA_HOME/dapr-$FLAVOUR" ;;
  full) PREFIX="$TDA_HOME/dapr-$FLAVOUR-full" ;;
  *) die "DAPR_BUILD must be slim or full, not '$DAPR_BUILD'" ;;
esac
# The build goes into a folder of its own and replaces PREFIX only when whole, so
# that processes still running the old binaries keep them, and a broken build
# leaves the old one in place.
BUILD="$PREFIX.partial"
LOG="$TDA_HOME/logs/build-dapr-$FLAVOUR-$DAPR_BUILD.log"

# The configuration `dapr run` uses when no --config is given: the one a
# full `dapr init` writes, which sends every trace to Zipkin, plus the name
# resolution that keeps the sidecar off the network.
write_default_config() {
  mkdir -p "$1/.dapr"
  cat > "$1/.dapr/config.yaml" <<YAML
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprConfig
spec:
  tracing:
    samplingRate: "1"
    zipkin:
      endpointAddress: http://localhost:$ZIPKIN_PORT/api/v2/spans
  # Not in \`dapr init\`'s file: sidecars find each other in a SQLite file of
  # the clone they run from, instead of mDNS, which listens on every interface.
  nameResolution:
    component: sqlite
    configuration:
      connectionString: .stack/nameresolution.db
YAML
}

# `dapr run` starts <prefix>/.dapr/bin/daprd. The CLI can pass daprd the
# listen address of its HTTP and gRPC APIs but not those of its metrics and
# internal gRPC servers, which then listen on every interface. So bin/daprd
# is this wrapper: it starts the real daprd with all of them on loopback.
# TDA_SIDECAR_ADDRESS is the one switch that opens them (docs/security.md);
# the wrapper refuses it without DAPR_API_TOKEN. The last flag wins in daprd.
write_daprd_wrapper() {
  cat > "$1/.dapr/bin/daprd.new" <<'SH'
#!/bin/sh
# Written by scripts/install-dapr.sh of tiny-durable-agent: starts the real daprd
# with every listener on loopback, unless TDA_SIDECAR_ADDRESS says otherwise.
address="${TDA_SIDECAR_ADDRESS:-127.0.0.1}"
# The address daprd announces to placement, which runs on loopback too; without
# it, a machine with no network but loopback (a laptop offline) stops daprd:
# "could not determine host IP address".
DAPR_HOST_IP="${DAPR_HOST_IP:-127.0.0.1}"
export DAPR_HOST_IP
case "$address" in
  127.*|localhost|::1) ;;
  *) if [ -z "$DAPR_API_TOKEN" ]; then
       echo "daprd: TDA_SIDECAR_ADDRESS=$address would let anyone who reaches this machine call the sidecar's API (secrets, state, workflows). Set DAPR_API_TOKEN too, or unset TDA_SIDECAR_ADDRESS." >&2
       exit 1
     fi ;;
esac
# `make serve-ha` puts each replica's sidecar on a host address of its own and its HTTP and gRPC APIs
# on 127.0.0.1 too (each replica on its own ports), where `dapr run` and the app reach their sidecar.
api="$address"
case "${TDA_SIDECAR_API_ALSO_ON:-}" in
  "") ;;
  127.*) api="$address,$TDA_SIDECAR_API_ALSO_ON" ;;
  *) echo "daprd: TDA_SIDECAR_API_ALSO_ON=$TDA_SIDECAR_API_ALSO_ON must be a loopback address (127.x)." >&2
     exit 1 ;;
esac
exec "$(dirname "$0")/../libexec/daprd" "$@" --dapr-listen-addresses "$api" \
  --dapr-internal-grpc-listen-address "$address" --metrics-listen-address "$address"
SH
  chmod +x "$1/.dapr/bin/daprd.new"
  mv "$1/.dapr/bin/daprd.new" "$1/.dapr/bin/daprd"   # whole, or not at all, for a daprd starting now
}

# The finished build of the current recipe and patch set that serves this request, if there is one.
# (A build without patches may predate the "patches" line of the stamp.)
is_current() {
  [ -f "$1/.complete" ] && grep -qx "recipe $DAPR_BUILD_RECIPE" "$1/.complete" || return 1
  [ "$PATCH_SET" = none ] || grep -qx "patches $PATCH_SET" "$1/.complete"
}
ready_prefix() {
  if is_current "$PREFIX"; then
    echo "$PREFIX"
  elif [ "$DAPR_BUILD" = slim ] && is_current "$PREFIX-full"; then
    echo "$PREFIX-full"
  else
    return 1
  fi
}

if ready="$(ready_prefix)"; then
  write_default_config "$ready"
  write_daprd_wrapper "$ready"
  exit 0
fi

# --- Go toolchain --------------------------------------------------------
# GOTOOLCHAIN=local: never let `go` fetch another toolchain behind our back; the check below decides.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
command -v go >/dev/null 2>&1 \
  || die "Go is not installed, and the Dapr runtime $DAPR_RUNTIME_VERSION is built with it (once per machine). Install Go >= $GO_MIN_VERSION (https://go.dev/dl, or your package manager), then run \`make setup\` again."
go_version="$(go env GOVERSION 2>/dev/null | sed 's/^go//')"
[ -n "$go_version" ] || go_version="$(go version | sed -n 's/.* go\([0-9][^ ]*\).*/\1/p')"
if [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$go_version" | sort -V | head -n1)" != "$GO_MIN_VERSION" ]; then
  die "Go ${go_version:-(unknown version)} is too old: Dapr $DAPR_RUNTIME_VERSION needs Go >= $GO_MIN_VERSION. Install a newer Go (https://go.dev/dl), then run \`make setup\` again."
fi

# --- what to compile -----------------------------------------------------
# Component registrations kept in the slim build. Each file in
# cmd/daprd/components registers one component; dropping a file drops that
# component and the SDKs it drags in.
SLIM_COMPONENTS=(
  state_redis state_in-memory
  pubsub_redis pubsub_in-memory
  conversation_openai conversation_echo
  secretstores_local_file secretstores_local_env
  configuration_redis
  lock_redis
  nameresolution_mdns nameresolution_sqlite
  middleware_http_routeralias
)

# Two clones building at once would trample each other: one builds, the other waits.
mkdir -p "$TDA_HOME"
exec 9>"$TDA_HOME/.install.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
  step /dev/null "runtime: waiting for another set-up's build to finish ($TDA_HOME/.install.lock)" flock 9
fi
if ready="$(ready_prefix)"; then
  write_default_config "$ready"
  write_daprd_wrapper "$ready"
  exit 0
fi
[ -f "$PREFIX/.complete" ] && say "runtime: the build in $PREFIX is of an older recipe; building it again"

start_record "$LOG"   # this build's timings, kept beside its log (lib.sh); docs/local-stack.md quotes them

started=$SECONDS
mkdir -p "$(dirname "$LOG")" && : > "$LOG"
if [ "$DAPR_BUILD" = slim ]; then how_long="minutes"; else how_long="every component: much longer"; fi
say "runtime: Dapr $DAPR_RUNTIME_VERSION ($DAPR_BUILD, patch set $PATCH_SET) and CLI $DAPR_CLI_VERSION are built once per machine ($how_long: each step prints its time); log: $LOG"

# go install refuses modules with replace directives, so build inside a
# writable copy of the module instead.
src="$TDA_HOME/src/dapr-$FLAVOUR-$DAPR_BUILD"
dt_src="$src-durabletask-go"

module_dir() {  # the directory `go mod download` put a module in; why not, in the log
  local json
  if ! json="$(go mod download -json "$1")"; then
    printf '%s\ncould not download %s (is the Go module proxy reachable? GOPROXY=%s)\n' \
      "$json" "$1" "$(go env GOPROXY)" >&2
    return 1
  fi
  printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

fetch_sources() {
  local dir
  dir="$(module_dir "github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION")"
  [ -d "$dir" ] || { echo "no directory for github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION: '$dir'"; return 1; }
  rm -rf "$src" && mkdir -p "$(dirname "$src")"
  cp -r "$dir" "$src" && chmod -R u+w "$src"
  if [ "$DAPR_BUILD" = slim ]; then
    local f name keep k
    for f in "$src"/cmd/daprd/components/*.go; do
      name="$(basename "$f" .go)"
      keep=no
      for k in "${SLIM_COMPONENTS[@]}"; do [ "$name" = "$k" ] && keep=yes; done
      [ "$keep" = yes ] || rm -f "$f"
    done
  fi
  patch_health_servers_to_loopback
  if [ "$PATCH_SET" != none ]; then apply_fixes_from_1_18_3; fi
}

# placement, scheduler and sentry accept --healthz-listen-address, but 1.18.2's
# health server never receives it and listens on every interface
# (pkg/healthz/server/server.go: net.Listen("tcp", ":<port>")). Our one patch
# to the runtime's sources makes it listen on loopback; docs/security.md has
# the upstream report.
patch_health_servers_to_loopback() {
  local file="$src/pkg/healthz/server/server.go"
  grep -q 'net.Listen("tcp", fmt.Sprintf(":%d", s.port))' "$file" \
    || { echo "$file changed upstream: the health-server patch no longer applies"; return 1; }
  sed -i 's/net.Listen("tcp", fmt.Sprintf(":%d", s.port))/net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))/' "$file"
}

# Our fixes from Dapr 1.18.3 (scripts/patches/README.md): scripts/patches/dapr/*.patch change the dapr
# sources; scripts/patches/durabletask-go/*.patch change a writable copy of the durabletask-go module
# that dapr's go.mod requires, which a `replace` line then builds in its place. Each patch must apply
# whole, or the build stops.
apply_fixes_from_1_18_3() {
  command -v patch >/dev/null 2>&1 || { echo "the patch command is missing (Debian: apt-get install patch)"; return 1; }
  local f version dir
  for f in $(patch_files); do
    case "$f" in dapr/*) echo "== $f"; patch -p1 --forward --batch -d "$src" < "$PATCHES_DIR/$f" ;; esac
  done
  if patch_files | grep -q '^durabletask-go/'; then
    version="$(cd "$src" && go list -m -f '{{.Version}}' github.com/dapr/durabletask-go)"
    dir="$(module_dir "github.com/dapr/durabletask-go@$version")"
    [ -d "$dir" ] || { echo "no directory for github.com/dapr/durabletask-go@$version: '$dir'"; return 1; }
    rm -rf "$dt_src" && cp -r "$dir" "$dt_src" && chmod -R u+w "$dt_src"
    for f in $(patch_files); do
      case "$f" in durabletask-go/*) echo "== $f (durabletask-go $version)"; patch -p1 --forward --batch -d "$dt_src" < "$PATCHES_DIR/$f" ;; esac
    done
    (cd "$src" && go mod edit -replace "github.com/dapr/durabletask-go=$dt_src")
  fi
}

ldflags="-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_RUNTIME_VERSION -X github.com/dapr/dapr/pkg/buildinfo.gitversion=v$DAPR_RUNTIME_VERSION-$DAPR_BUILD-patches-$PATCH_SET"
build_runtime_binary() {
  local out="$BUILD/.dapr/bin/$1"
  [ "$1" = daprd ] && out="$BUILD/.dapr/libexec/daprd"   # bin/daprd is the wrapper
  echo "== go build ./cmd/$1"
  cd "$src" && go build -tags allcomponents -ldflags "$ldflags" -o "$out" "./cmd/$1"
}

# The CLI 1.16.5 module asks for components-contrib v1.16.3, which the proxy
# refuses; v1.16.1 (same minor, used only through the dapr/dapr packages the
# CLI imports) is served.
build_cli() {
  local dir cli_src="$TDA_HOME/src/cli-$DAPR_CLI_VERSION"
  echo "== the dapr CLI $DAPR_CLI_VERSION"
  dir="$(module_dir "github.com/dapr/cli@v$DAPR_CLI_VERSION")"
  [ -d "$dir" ] || { echo "no directory for github.com/dapr/cli@v$DAPR_CLI_VERSION: '$dir'"; return 1; }
  rm -rf "$cli_src" && cp -r "$dir" "$cli_src" && chmod -R u+w "$cli_src"
  cd "$cli_src"
  go mod edit -replace github.com/dapr/components-contrib=github.com/dapr/components-contrib@v1.16.1
  GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w -X main.version=$DAPR_CLI_VERSION -X main.apiVersion=1.0" \
    -o "$BUILD/bin/dapr" .
  cd / && rm -rf "$cli_src"
}

timed "runtime: downloading the Dapr $DAPR_RUNTIME_VERSION sources (Go module proxy)" fetch_sources
rm -rf "$BUILD"
mkdir -p "$BUILD/.dapr/bin" "$BUILD/.dapr/libexec" "$BUILD/bin" "$BUILD/.dapr/components"
number=0
for cmd in daprd placement scheduler sentry; do
  number=$((number + 1))
  timed "runtime: building $cmd ($number/5)" build_runtime_binary "$cmd"
done
timed "runtime: building the dapr CLI $DAPR_CLI_VERSION (5/5)" build_cli

write_default_config "$BUILD"
write_daprd_wrapper "$BUILD"
rm -rf "$src" "$dt_src"
printf '%s\nrecipe %s\npatches %s\n' "$(date -u +%FT%TZ)" "$DAPR_BUILD_RECIPE" "$PATCH_SET" > "$BUILD/.complete"
rm -rf "$PREFIX.old"
if [ -d "$PREFIX" ]; then mv "$PREFIX" "$PREFIX.old"; fi
mv "$BUILD" "$PREFIX"
rm -rf "$PREFIX.old"
write_record "Dapr runtime $DAPR_RUNTIME_VERSION ($DAPR_BUILD) and CLI $DAPR_CLI_VERSION" "$((SECONDS - started))"
say "runtime: Dapr $("$PREFIX/.dapr/bin/daprd" --version) ready in $PREFIX ($((SECONDS - started)) s in all)"
