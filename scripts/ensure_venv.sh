#!/usr/bin/env bash
# Create .venv if it is missing and (re)install isnet with its dev extra (and, where they install, the onnx,
# postgres and xrv extras) when pyproject.toml or this script changed.
# Sourced by quickstart.sh and test.sh; a second run installs nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${ISNET_VENV:-.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  echo "isnet needs Python >= 3.10 (set PYTHON=/path/to/python3.x)" >&2; exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.isnet-installed"
want="$(cat pyproject.toml scripts/ensure_venv.sh | sha256sum | cut -c1-16)"   # a new extra below reinstalls too
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing isnet and its dependencies into $VENV (first time: several minutes, torch is large)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  # optional extras: the tests that need one are skipped without it (onnx: isnet export --format onnx and its
  # tests; postgres: the slow PostgreSQL tracking test; xrv: reading torchxrayvision's weight files)
  for extra in onnx postgres xrv; do
    "$VENV/bin/python" -m pip install --quiet -e ".[dev,$extra]" \
      || echo "note: the $extra extra could not be installed; the tests that need it will be skipped" >&2
  done
  echo "$want" > "$stamp"
fi
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac   # ISNET_VENV may be absolute or relative to the repository
export PATH="$VENV/bin:$PATH"
