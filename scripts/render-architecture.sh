#!/usr/bin/env bash
# Renders images/architecture.dot to images/architecture.png with Graphviz.
#
#   scripts/render-architecture.sh          (from any directory)
#
# -e: stop at the first failing command, so a failed render never leaves a
#     success message behind; -u: an unset variable is a bug, not an empty
#     string; -o pipefail: a failure inside a pipeline is not hidden by the
#     last command's success.
set -euo pipefail

# Paths relative to the repository root, whatever the current directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/images/architecture.dot"
OUT="$ROOT/images/architecture.png"
DPI="${DPI:-110}"   # readable on screen and in the README; override with DPI=150

if ! command -v dot >/dev/null 2>&1; then
  echo "error: Graphviz 'dot' was not found on PATH." >&2
  echo "  install it with: sudo apt-get update && sudo apt-get install -y graphviz" >&2
  echo "  (macOS: brew install graphviz)" >&2
  exit 1
fi

if [[ ! -f "$SRC" ]]; then
  echo "error: $SRC is missing." >&2
  exit 1
fi

# Render to a temporary file first, so a failed render keeps the old PNG.
tmp="$(mktemp "$ROOT/images/.architecture.XXXXXX.png")"
trap 'rm -f "$tmp"' EXIT
dot -Tpng -Gdpi="$DPI" -o "$tmp" "$SRC"
chmod 0644 "$tmp"   # mktemp creates 0600; the image is meant to be readable
mv -f "$tmp" "$OUT"
trap - EXIT

# Width and height are big-endian 32-bit integers at bytes 16-23 of a PNG.
read -r -a b < <(od -An -tu1 -j16 -N8 "$OUT")
width=$(( (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3] ))
height=$(( (b[4] << 24) | (b[5] << 16) | (b[6] << 8) | b[7] ))
echo "wrote ${OUT#"$ROOT"/} (${width} x ${height} px at ${DPI} dpi)"
