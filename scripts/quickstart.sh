#!/usr/bin/env bash
# README command 1: set up, generate the phantom chest X-ray set (once), train the standard model and ISNet on it
# (same backbone, image size and seed), then compare them: a table of test accuracy/AUC and background relevance
# share, and one heatmap figure. Extra arguments go to both `isnet train` calls (e.g. --set train.threads=1).
#
# Sizes, from the environment (defaults in brackets):
#   QUICKSTART_DATA [data/phantom]        the phantom set (generated if DATA/manifest.csv is missing)
#   QUICKSTART_PER_CLASS [200]            images per site and class when generating (3 sites, 3 classes)
#   QUICKSTART_SIZE [64]                  image side the models train at
#   QUICKSTART_STD_EPOCHS [24]            epochs of the standard model
#   QUICKSTART_ISNET_EPOCHS [18]          epochs of ISNet's phase (its recipe's kept warm-up comes on top: 6)
#   QUICKSTART_OUT [runs/quickstart]      the comparison figure and table (compare.png, compare.json) and
#                                         quickstart.json (the table, the settings, seconds, commit, machine)
# The MLflow store is the default one or $MLFLOW_TRACKING_URI (choose it there rather than with
# --set tracking.tracking_uri: `isnet compare` reads the runs from the same store).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ensure_venv.sh
DATA="${QUICKSTART_DATA:-data/phantom}"
PER_CLASS="${QUICKSTART_PER_CLASS:-200}"
SIZE="${QUICKSTART_SIZE:-64}"
STD_EPOCHS="${QUICKSTART_STD_EPOCHS:-24}"
ISNET_EPOCHS="${QUICKSTART_ISNET_EPOCHS:-18}"
OUT="${QUICKSTART_OUT:-runs/quickstart}"

if [ ! -f "$DATA/manifest.csv" ]; then
  isnet phantom --out "$DATA" --sites 3 --per-class "$PER_CLASS" --seed 0 --workers 2
else
  echo "using the existing phantom data set in $DATA (delete it to regenerate)"
fi

mkdir -p "$OUT"
rm -f "$OUT/standard.run_id" "$OUT/isnet.run_id"   # never compare the runs of an earlier quick-start
# one config for both (the ISNet pipeline; the standard model is the same run with ISNet switched off), so that
# the only difference is the method: the same backbone, image size, optimiser, schedule and seed
common=(--config pipelines/isnet_covid_tb.yaml --manifest "$DATA/manifest.csv" --backbone small_cnn
        --image-size "$SIZE" --seed 0)

echo "== standard model: pipelines/isnet_covid_tb.yaml without ISNet (methods=[standard]), $STD_EPOCHS epochs"
isnet train "${common[@]}" --set "methods=[standard]" --epochs "$STD_EPOCHS" \
  --run-name quickstart-standard --run-id-file "$OUT/standard.run_id" "$@"
echo "== ISNet: pipelines/isnet_covid_tb.yaml (its recipe: docs/methods.md, \"Recipes\"), $ISNET_EPOCHS epochs"
isnet train "${common[@]}" --epochs "$ISNET_EPOCHS" \
  --run-name quickstart-isnet --run-id-file "$OUT/isnet.run_id" "$@"

std_run="$(cat "$OUT/standard.run_id")"
isnet_run="$(cat "$OUT/isnet.run_id")"
echo "== standard vs ISNet"
isnet compare --runs "$std_run" "$isnet_run" --labels standard,ISNet --manifest "$DATA/manifest.csv" \
  --out "$OUT/compare.png" --json "$OUT/compare.json"
echo "MLflow runs: standard $std_run, ISNet $isnet_run in ${MLFLOW_TRACKING_URI:-sqlite:///mlflow/mlflow.db}"
# what this quick-start measured, with its settings, commit and machine (a result file: docs/results.md)
python - "$OUT" "$SECONDS" "$PER_CLASS" "$SIZE" "$STD_EPOCHS" "$ISNET_EPOCHS" "$*" <<'PY'
import json, sys
from pathlib import Path
from isnet.tracking.provenance import write_run_info
out, seconds, per_class, size, std_epochs, isnet_epochs, extra = sys.argv[1:]
rows = json.loads((Path(out) / "compare.json").read_text())
write_run_info(Path(out) / "quickstart.json", "bash scripts/quickstart.sh" + (f" {extra}" if extra else ""),
               quickstart={"seconds": int(seconds), "rows": rows,
                           "settings": {"per_class": int(per_class), "size": int(size), "std_epochs": int(std_epochs),
                                        "isnet_epochs": int(isnet_epochs), "extra_args": extra}})
print(f"quick-start took {int(seconds) // 60} min {int(seconds) % 60} s; record: {out}/quickstart.json")
PY
