#!/usr/bin/env bash
# README command 2: set up and run the test suite (long runs are marked `slow` and skipped; add -m slow).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ensure_venv.sh
exec python -m pytest -q "$@"
