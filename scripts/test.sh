#!/usr/bin/env bash
# README command 2: set up, lint (ruff) and run the test suite (long runs are marked `slow` and skipped; add -m slow).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ensure_venv.sh
ruff check isnet tests scripts   # lint first (pyproject.toml [tool.ruff]): a seconds-long check
exec python -m pytest -q "$@"
