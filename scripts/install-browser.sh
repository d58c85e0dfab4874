#!/usr/bin/env bash
# What the browser tests (tests/test_dashboard.py) need beyond `make setup`:
# Debian's Chromium. Playwright (requirements-dev.txt) drives it through
# executable_path=/usr/bin/chromium; it downloads no browser of its own.
# Prints one line when it installs, nothing when Chromium is there;
# apt-get's output goes to .stack/logs/setup-browser.log.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=/usr/bin/chromium   # the path tools/runs/screenshots.py and the tests launch
LOG="${TDA_STATE_DIR:-.stack}/logs/setup-browser.log"   # this clone's logs, as in tools/stack/settings.py

die() { printf '[browser] error: %s\n' "$*" >&2; exit 1; }

[ -x "$CHROMIUM" ] && exit 0
command -v apt-get >/dev/null 2>&1 || die "install Chromium at $CHROMIUM with your package manager, then run this again"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
[ -z "$SUDO" ] || sudo -v || die "installing Chromium needs root: sudo apt-get install -y chromium"

mkdir -p "$(dirname "$LOG")"
started=$SECONDS
printf '[browser] installing chromium (apt-get) ... ' >&2
if ! { $SUDO apt-get update && $SUDO env DEBIAN_FRONTEND=noninteractive \
       apt-get install -y --no-install-recommends chromium; } >"$LOG" 2>&1 </dev/null; then
  printf 'failed; the last lines of %s:\n' "$LOG" >&2
  tail -n 20 "$LOG" | sed 's/^/    /' >&2
  die "apt-get install chromium failed; the whole output is in $LOG"
fi
[ -x "$CHROMIUM" ] || die "apt-get installed chromium, but $CHROMIUM is not there"
printf '%s s\n' "$((SECONDS - started))" >&2
