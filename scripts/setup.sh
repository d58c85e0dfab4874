#!/usr/bin/env bash
# Installs what the example needs, skipping whatever is already there:
#   1. a virtualenv in .venv with requirements-dev.txt (the agent, the tooling, the tests);
#   2. redis-server from the system's package manager;
#   3. the pinned Dapr runtime and CLI (scripts/install-dapr.sh, cached per machine);
#   4. the Zipkin server jar (scripts/install-zipkin.sh), if Java is there.
# Each step that runs prints one line, "[setup] what ... 41 s"; what pip, apt-get,
# Go and Maven say goes to a log file, and a failed step shows the log's last
# lines and its path. A step already done prints nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"   # the facts (tools/stack/stack.env), TDA_HOME, say/die/step

LOG_DIR="${TDA_STATE_DIR:-.stack}/logs"   # this clone's logs, as in tools/stack/settings.py

# --- Python ---------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 \
  || die "Python $PYTHON_MIN_VERSION or newer is needed and '$PYTHON' was not found. Install Python >= $PYTHON_MIN_VERSION, then run: make PYTHON=/path/to/python$PYTHON_MIN_VERSION setup"
"$PYTHON" -c "import sys; sys.exit(sys.version_info < (${PYTHON_MIN_VERSION//./, }))" \
  || die "$("$PYTHON" --version 2>&1) is too old: dapr-agents $DAPR_AGENTS_VERSION needs Python >= $PYTHON_MIN_VERSION. Install it, then run: make PYTHON=python$PYTHON_MIN_VERSION setup"

install_venv() {
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv || { rm -rf .venv; false; }   # Debian: apt-get install python3-venv
  fi
  .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off --upgrade pip
  .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -r requirements-dev.txt
}

stamp=.venv/.requirements.sha256   # tools/doctor/checks.py compares it too
want="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log="$LOG_DIR/setup-python.log"
  mkdir -p "$LOG_DIR" && : > "$log"
  step "$log" "python: installing requirements-dev.txt into .venv" install_venv
  echo "$want" > "$stamp"
fi

# --- Redis ----------------------------------------------------------------
apt_install() {
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

if ! command -v redis-server >/dev/null 2>&1; then
  log="$LOG_DIR/setup-redis.log"
  mkdir -p "$LOG_DIR" && : > "$log"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if [ -n "$SUDO" ]; then
      command -v sudo >/dev/null 2>&1 || die "redis-server is missing and installing it needs root. Run: apt-get install redis-server (as root)"
      sudo -v || die "redis-server is missing and installing it needs sudo. Run: sudo apt-get install redis-server"
    fi
    step "$log" "redis: installing redis-server (apt-get)" apt_install redis-server
  elif command -v brew >/dev/null 2>&1; then
    step "$log" "redis: installing redis (Homebrew)" brew install redis
  else
    die "redis-server is missing. Install Redis 6 or newer with your package manager, then run this again."
  fi
fi

# --- Dapr -----------------------------------------------------------------
# Your own `dapr init` of the same minor version is used as it is: daprd,
# placement and scheduler in ~/.dapr/bin and `dapr` on PATH (the rule of
# tools/stack/runtime.py). Otherwise install-dapr.sh builds ours once per machine;
# when that build is there it returns at once and prints nothing.
dapr_init_runtime() {
  local bin="$HOME/.dapr/bin" version
  command -v dapr >/dev/null 2>&1 && [ -e "$bin/daprd" ] && [ -e "$bin/placement" ] && [ -e "$bin/scheduler" ] \
    || return 1
  version="$("$bin/daprd" --version 2>/dev/null || true)"
  [[ "$version" =~ ([0-9]+\.[0-9]+\.[0-9]+) ]] && [[ "${BASH_REMATCH[1]}" == "${DAPR_RUNTIME_VERSION%.*}".* ]]
}

dapr_init_runtime || bash scripts/install-dapr.sh

# --- Zipkin (tracing) -------------------------------------------------------
# Optional: without it everything runs, with tracing off (tools/stack/commands.py says so).
bash scripts/install-zipkin.sh || say "zipkin: not installed, so tracing stays off; \`make setup\` tries again"
