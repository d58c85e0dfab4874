#!/usr/bin/env bash
# Installs what the example needs, skipping whatever is already there:
#   1. a virtualenv in .venv with requirements-dev.txt (the agent, the tooling, the tests);
#   2. redis-server from the system's package manager;
#   3. the pinned Dapr runtime and CLI (scripts/install-dapr.sh, cached per machine);
#   4. the Zipkin server jar (scripts/install-zipkin.sh), if Java is there.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# --- Python ---------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "Python 3.11 or newer is needed and '$PYTHON' was not found. Install Python >= 3.11, or run: make PYTHON=/path/to/python3.11 ..."
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$("$PYTHON" --version 2>&1) is too old: dapr-agents 1.0.9 needs Python >= 3.11. Install it, then run: make PYTHON=python3.11 ..."

stamp=.venv/.requirements.sha256
want="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing requirements-dev.txt into .venv (the first time: about a minute)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# --- Redis ----------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1 || die "redis-server is missing and installing it needs root. Run: sudo apt-get install redis-server"
    say "installing redis-server from the system packages"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  elif command -v brew >/dev/null 2>&1; then
    say "installing redis with Homebrew"
    brew install redis
  else
    die "redis-server is missing. Install Redis 6 or newer with your package manager, then run this again."
  fi
fi

# --- Dapr -----------------------------------------------------------------
# An existing `dapr init --slim` of the same minor version is used as it is
# (tools/stack.py decides); otherwise ours is built once per machine and
# reused (install-dapr.sh returns at once when it is there).
if ! .venv/bin/python -c 'import sys, tools.stack as s; sys.exit(s.find_runtime().runtime_path is not None)' 2>/dev/null; then
  bash scripts/install-dapr.sh
fi

# --- Zipkin (tracing) -------------------------------------------------------
bash scripts/install-zipkin.sh
