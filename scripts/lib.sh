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
