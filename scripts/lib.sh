# shellcheck shell=bash
# Sourced by scripts/*.sh: the example's facts, and how a set-up step reports.
# Set TAG (e.g. TAG=setup) before sourcing; lines then start with "[setup]".
# shellcheck source=tools/stack/stack.env disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/../tools/stack/stack.env"   # versions and ports: the one home of the facts
TDA_HOME="${TDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tiny-durable-agent}"   # the rule of tools/stack/settings.py
TAG="${TAG:-setup}"

say() { printf '[%s] %s\n' "$TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$TAG" "$*" >&2; exit 1; }

# step LOG LABEL COMMAND...: run COMMAND (errexit on) with its output appended to
# LOG, on one line "[TAG] LABEL ... 12 s". If it fails: the log's last 20 lines,
# the log's path, exit.
step() {
  local log="$1" label="$2" started=$SECONDS status
  shift 2
  mkdir -p "$(dirname "$log")"
  printf '[%s] %s ... ' "$TAG" "$label" >&2
  set +e
  ( set -e; "$@" ) >>"$log" 2>&1 </dev/null
  status=$?
  set -e
  if [ "$status" -ne 0 ]; then
    printf 'failed after %s s; the last lines of %s:\n' "$((SECONDS - started))" "$log" >&2
    tail -n 20 "$log" | sed 's/^/    /' >&2
    die "$label failed; the whole output is in $log"
  fi
  printf '%s s\n' "$((SECONDS - started))" >&2
}

# The record of a build's timings, beside its log LOG as LOG.times.json: per step, in all, and the
# machine's state (cores, load at the end, how much the Go caches held before: a cold build starts
# from empty ones). `python -m tools.proof.figures builds` quotes it in the docs.
# start_record LOG, then `timed LABEL COMMAND...` per step, then `write_record WHAT TOTAL_S`.
start_record() {
  RECORD="${1%.log}.times.json"
  GO_CACHES_BEFORE="{\"GOCACHE\": $(go_cache_mb GOCACHE), \"GOMODCACHE\": $(go_cache_mb GOMODCACHE)}"
  STEP_TIMES=()
}
go_cache_mb() { local mb; mb="$(du -sm "$(go env "$1")" 2>/dev/null | cut -f1)" || true; echo "${mb:-0}"; }
timed() {  # timed LABEL COMMAND...: one step (lib.sh), its seconds kept for the record
  local label="$1" begun=$SECONDS
  step "$LOG" "$@"
  STEP_TIMES+=("\"$label\": $((SECONDS - begun))")
}
write_record() {  # write_record WHAT TOTAL_S
  local IFS=, load
  load="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null)" || true
  printf '{"what": "%s", "finished": "%s", "cores": %s, "load_average_1min_at_end": %s, "go": "%s", "go_caches_mb_before": %s, "steps_s": {%s}, "total_s": %s}\n' \
    "$1" "$(date -u +%FT%TZ)" "$(getconf _NPROCESSORS_ONLN)" "${load:-null}" "$(go env GOVERSION)" \
    "$GO_CACHES_BEFORE" "${STEP_TIMES[*]}" "$2" > "$RECORD"
}

# The kube installers' shared steps (install-kube-check.sh, install-kube-node.sh, install-kube-dapr.sh).

# take_build_lock NAME LABEL: holds fd 9 on $TDA_HOME/.install-NAME.lock, so two set-ups never build NAME at once.
take_build_lock() {
  mkdir -p "$TDA_HOME"
  exec 9>"$TDA_HOME/.install-$1.lock"
  if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
    step /dev/null "$2: waiting for another set-up's build to finish" flock 9
  fi
}

# go_module_dir MODULE@VERSION: the folder `go mod download` put it in: they build from the Go module proxy only.
go_module_dir() {
  local json
  json="$(go mod download -json "$1")" || { printf '%s\ncould not download %s\n' "$json" "$1" >&2; return 1; }
  printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# kubernetes_module_copy DEST: k8s.io/kubernetes made buildable in DEST: its download lacks the ./staging it replaces.
kubernetes_module_copy() (
  dest="$1" staging="v0.${KUBERNETES_VERSION#1.}"   # the release's published staging modules: v1.34.4 -> v0.34.4
  dir="$(go_module_dir "k8s.io/kubernetes@v$KUBERNETES_VERSION")"
  rm -rf "$dest" && mkdir -p "$(dirname "$dest")"
  cp -r "$dir" "$dest" && chmod -R u+w "$dest"
  cd "$dest"
  rm -rf vendor go.work go.work.sum
  for module in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' go.mod); do
    go mod edit -dropreplace "$module"
  done
  for module in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) v0\.0\.0$#\1#p' go.mod); do
    go mod edit -require "$module@$staging"
  done
)

# kubernetes_build OUT PACKAGE, inside that copy: with the version flags, so that `OUT --version` names the release.
kubernetes_build() {
  local v="k8s.io/component-base/version"
  GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w -X $v.gitVersion=v$KUBERNETES_VERSION \
    -X $v.gitMajor=${KUBERNETES_VERSION%%.*} -X $v.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) \
    -X $v.gitTreeState=clean" -o "$1" "$2"
}
