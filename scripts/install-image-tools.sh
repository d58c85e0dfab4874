#!/usr/bin/env bash
# What `make images` needs beyond `make setup`: Graphviz (the architecture
# picture), Debian's Chromium and Playwright (the Zipkin screenshot; Playwright
# drives the system Chromium, it downloads no browser), matplotlib (bench and
# history pictures, already in requirements-dev.txt).
# Each step that runs prints one line; apt-get's and pip's output goes to
# .stack/logs/setup-images.log. Nothing is printed when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=images
# shellcheck source=scripts/lib.sh
. scripts/lib.sh   # say/die/step
LOG="${TDA_STATE_DIR:-.stack}/logs/setup-images.log"   # this clone's logs, as in tools/stack/settings.py

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
