#!/usr/bin/env bash
# Builds the pinned Dapr runtime (daprd, placement, scheduler, sentry) and the
# dapr CLI from the Go module proxy, because `dapr init` downloads release
# binaries from GitHub and needs Docker; neither is available everywhere.
#
# The result lands in a cache outside the clone, keyed by version, so every
# clone (and CI) reuses one build:
#   $TDA_HOME/dapr-<runtime>/.dapr/bin/{daprd,placement,scheduler,sentry}
#   $TDA_HOME/dapr-<runtime>/.dapr/config.yaml  (what `dapr init --slim` writes)
#   $TDA_HOME/dapr-<runtime>/bin/dapr           (the CLI)
# An existing `dapr init` install of the same minor version is reused as is.
set -euo pipefail

DAPR_RUNTIME_VERSION="${DAPR_RUNTIME_VERSION:-1.18.2}"
# The newest CLI release whose module the Go module proxy serves (1.17.x and
# 1.18.x are refused there). It drives runtime 1.18 fine: `dapr run` only
# passes flags that daprd 1.18 still accepts.
DAPR_CLI_VERSION="${DAPR_CLI_VERSION:-1.16.5}"
GO_MIN_VERSION="1.26.5"   # the go directive of github.com/dapr/dapr@v1.18.2
TDA_HOME="${TDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tiny-durable-agent}"
# DAPR_BUILD=slim compiles only the components this example uses (minutes);
# DAPR_BUILD=full compiles every component, like a release build (much longer).
DAPR_BUILD="${DAPR_BUILD:-slim}"

PREFIX="$TDA_HOME/dapr-$DAPR_RUNTIME_VERSION"
[ "$DAPR_BUILD" = full ] && PREFIX="$PREFIX-full"
RUNTIME_BIN="$PREFIX/.dapr/bin"
STAMP="$PREFIX/.complete"

say() { printf '[dapr] %s\n' "$*" >&2; }
die() { printf '[dapr] error: %s\n' "$*" >&2; exit 1; }

# The configuration `dapr run` uses when no --config is given: the one a
# full `dapr init` writes, which sends every trace to Zipkin on :9411.
write_default_config() {
  mkdir -p "$PREFIX/.dapr"
  cat > "$PREFIX/.dapr/config.yaml" <<'YAML'
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprConfig
spec:
  tracing:
    samplingRate: "1"
    zipkin:
      endpointAddress: http://localhost:9411/api/v2/spans
YAML
}

if [ -f "$STAMP" ]; then
  write_default_config
  exit 0
fi

# --- Go toolchain --------------------------------------------------------
command -v go >/dev/null 2>&1 || die "Go is not installed. Install Go >= $GO_MIN_VERSION (https://go.dev/doc/install, or your package manager), then run this again."
go_version="$(go env GOVERSION | sed 's/^go//')"
if [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$go_version" | sort -V | head -n1)" != "$GO_MIN_VERSION" ]; then
  die "Go $go_version is too old: Dapr $DAPR_RUNTIME_VERSION needs Go >= $GO_MIN_VERSION. Install a newer Go, then run this again."
fi
# Never let `go` fetch another toolchain behind our back; the check above decides.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

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
  nameresolution_mdns
  middleware_http_routeralias
)

mkdir -p "$TDA_HOME"
exec 9>"$TDA_HOME/.install.lock"
flock 9   # two clones building at once would trample each other
[ -f "$STAMP" ] && exit 0

started=$(date +%s)
say "Building Dapr runtime $DAPR_RUNTIME_VERSION ($DAPR_BUILD build) and CLI $DAPR_CLI_VERSION into $PREFIX"
say "This happens once per machine and takes several minutes on a cold cache; later runs reuse it."

say "downloading github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION from the Go module proxy"
src_mod="$(go mod download -json "github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$src_mod" ] || die "could not download github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY))"

# go install refuses modules with replace directives, so build inside a
# writable copy of the module instead.
src="$TDA_HOME/src/dapr-$DAPR_RUNTIME_VERSION-$DAPR_BUILD"
rm -rf "$src" && mkdir -p "$(dirname "$src")"
cp -r "$src_mod" "$src" && chmod -R u+w "$src"
if [ "$DAPR_BUILD" = slim ]; then
  for f in "$src"/cmd/daprd/components/*.go; do
    name="$(basename "$f" .go)"
    keep=no
    for k in "${SLIM_COMPONENTS[@]}"; do [ "$name" = "$k" ] && keep=yes; done
    [ "$keep" = yes ] || rm -f "$f"
  done
fi

ldflags="-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_RUNTIME_VERSION -X github.com/dapr/dapr/pkg/buildinfo.gitversion=v$DAPR_RUNTIME_VERSION-$DAPR_BUILD"
mkdir -p "$RUNTIME_BIN" "$PREFIX/bin" "$PREFIX/.dapr/components"
for cmd in daprd placement scheduler sentry; do
  t0=$(date +%s)
  say "compiling $cmd (progress: one dot per 30 s)"
  ( while sleep 30; do printf '.' >&2; done ) & ticker=$!
  ( cd "$src" && go build -tags allcomponents -ldflags "$ldflags" -o "$RUNTIME_BIN/$cmd" "./cmd/$cmd" ) || { kill $ticker; die "building $cmd failed (see the Go output above)"; }
  kill $ticker 2>/dev/null || true; wait $ticker 2>/dev/null || true
  printf '\n' >&2
  say "$cmd built in $(( $(date +%s) - t0 )) s"
done

say "compiling the dapr CLI $DAPR_CLI_VERSION"
cli_mod="$(go mod download -json "github.com/dapr/cli@v$DAPR_CLI_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$cli_mod" ] || die "could not download github.com/dapr/cli@v$DAPR_CLI_VERSION"
cli_src="$TDA_HOME/src/cli-$DAPR_CLI_VERSION"
rm -rf "$cli_src" && cp -r "$cli_mod" "$cli_src" && chmod -R u+w "$cli_src"
# The CLI 1.16.5 module asks for components-contrib v1.16.3, which the proxy
# refuses; v1.16.1 (same minor, used only through the dapr/dapr packages the
# CLI imports) is served. This is the one change we make to upstream sources.
( cd "$cli_src" \
  && go mod edit -replace github.com/dapr/components-contrib=github.com/dapr/components-contrib@v1.16.1 \
  && GOFLAGS="$GOFLAGS -mod=mod" go build \
       -ldflags "-s -w -X main.version=$DAPR_CLI_VERSION -X main.apiVersion=1.0" \
       -o "$PREFIX/bin/dapr" . ) || die "building the dapr CLI failed (see the Go output above)"
rm -rf "$cli_src"

write_default_config
rm -rf "$src"
date -u +%FT%TZ > "$STAMP"
say "done in $(( $(date +%s) - started )) s: $("$RUNTIME_BIN/daprd" --version)"
