#!/usr/bin/env bash
# README command 1: set up, generate the phantom chest X-ray set (once) and train the default classifier.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ensure_venv.sh
if [ ! -f data/phantom/manifest.csv ]; then
  isnet phantom --out data/phantom --sites 3 --per-class 200 --seed 0 --workers 2
else
  echo "using the existing phantom data set in data/phantom (delete it to regenerate)"
fi
isnet train --config pipelines/train_covid_tb.yaml --manifest data/phantom/manifest.csv "$@"
