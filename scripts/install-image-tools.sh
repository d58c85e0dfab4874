#!/usr/bin/env bash
# What `make images` needs beyond `make setup`: Graphviz (the architecture
# picture), Debian's Chromium and Playwright (the Zipkin screenshot; Playwright
# drives the system Chromium, it downloads no browser), matplotlib (bench and
# history pictures, already in requirements-dev.txt).
# Each step that runs prints one line; apt-get's and pip's output goes to
# .stack/logs/setup-images.log. Nothing is printed when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

LOG="${TDA_STATE_DIR:-.stack}/logs/setup-images.log"   # this clone's logs, as in tools/settings.py

die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

# step LOG LABEL COMMAND...: run COMMAND (errexit on) with its output appended to
# LOG, on one line "[images] LABEL ... 12 s". If it fails: the log's last 20 lines,
# the log's path, exit. (The same helper is in scripts/setup.sh.)
step() {
  local log="$1" label="$2" started=$SECONDS status
  shift 2
  mkdir -p "$(dirname "$log")"
  printf '[images] %s ... ' "$label" >&2
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

apt_install() {
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

missing=()
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "install ${missing[*]} with your package manager, then run this again"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  [ -z "$SUDO" ] || sudo -v || die "installing ${missing[*]} needs root: sudo apt-get install ${missing[*]}"
  mkdir -p "$(dirname "$LOG")" && : > "$LOG"
  step "$LOG" "installing ${missing[*]} (apt-get)" apt_install "${missing[@]}"
fi
if ! .venv/bin/python -c 'import playwright' 2>/dev/null; then
  step "$LOG" "installing playwright into .venv (pip)" \
    .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off playwright==1.65.2
fi
