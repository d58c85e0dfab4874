#!/usr/bin/env bash
# What `make images` needs beyond `make setup`: Graphviz (the architecture
# picture), Debian's Chromium and Playwright (the Zipkin screenshot; Playwright
# drives the system Chromium, it downloads no browser), matplotlib (bench and
# history pictures, already in requirements-dev.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

missing=()
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "install ${missing[*]} with your package manager, then run this again"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "installing ${missing[*]} from the system packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
.venv/bin/python -c 'import playwright' 2>/dev/null \
  || .venv/bin/python -m pip install --quiet --disable-pip-version-check playwright==1.65.2
