#!/usr/bin/env bash
# Generalisation under confounding, one seed (recipe: pipelines/generalisation.yaml; data: docs/phantom.md).
#   bash scripts/generalisation.sh [SEED] [OUT]
# 1. generates the confounded phantoms at 64 px in OUT/phantom (unless OUT/phantom/manifest.csv exists),
# 2. trains standard, isnet, isnet (stochastic), isnet+sgdrop (the ISNet runs use the config's recipe,
#    method.isnet.recipe), rrr and isnet_published (the reference's recipe: 5-epoch warm-up thrown away, ISNet
#    from the initial weights) on the training sites;
#    isnet_balanced (not in the default RUNS) is the published recipe with method.isnet.balance=0.5 (the
#    heatmap loss's gradient capped at half the cross-entropy's on every step); isnet_stochastic_published and
#    isnet_sgdrop_published are the published recipe with those methods,
# 3. writes the external-site report of the runs: OUT/report.html and OUT/report.json.
# Prints the run ids (also in OUT/runs.tsv: the runs of the last report) and the report path.
#
# Environment (defaults in brackets):
#   SEED [0]  OUT [runs/generalisation/seed$SEED]  PER_CLASS [200]  WORKERS [2] (phantom rendering)
#   SEVERITY [medium]  the markers' severity (isnet phantom --severity low|medium|high; docs/phantom.md)
#   EPOCHS [the config's, 12]  DEVICE [auto] (training and report)  RESAMPLES [1000] (report bootstrap)
#   RUNS [standard isnet isnet_stochastic isnet_sgdrop rrr isnet_published]  a subset to train, in this order
#   REUSE [0]  1: keep the runs already listed in OUT/runs.tsv (e.g. to redo only the report)
#   TRAIN_ARGS []  extra arguments for every `isnet train`, e.g. "--set model.width=8"
#   ISNET []  the command that runs isnet, e.g. "python -m isnet"; unset: scripts/ensure_venv.sh and `isnet`
#   MLFLOW_TRACKING_URI  where runs are tracked (isnet's default: sqlite:///mlflow/mlflow.db here)
# Smoke test (a few minutes on 2 CPU cores):
#   PER_CLASS=2 EPOCHS=1 RESAMPLES=20 bash scripts/generalisation.sh 0 /tmp/generalisation-smoke
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

SEED="${1:-${SEED:-0}}"
OUT="${2:-${OUT:-$REPO/runs/generalisation/seed$SEED}}"   # a relative OUT is relative to the current folder
PER_CLASS="${PER_CLASS:-200}"
WORKERS="${WORKERS:-2}"
SEVERITY="${SEVERITY:-medium}"
DEVICE="${DEVICE:-auto}"
RESAMPLES="${RESAMPLES:-1000}"
RUNS="${RUNS:-standard isnet isnet_stochastic isnet_sgdrop rrr isnet_published}"
REUSE="${REUSE:-0}"
CONFIG=pipelines/generalisation.yaml

overrides_for() {  # the run's own overrides on top of the config
  case "$1" in
    standard)         echo "--set methods=[standard]" ;;
    isnet)            echo "--set methods=[isnet]" ;;
    isnet_stochastic) echo "--set methods=[isnet] --set method.isnet.variant=stochastic" ;;
    isnet_sgdrop)     echo "--set methods=[isnet,sgdrop]" ;;
    rrr)              echo "--set methods=[rrr]" ;;
    isnet_published)  echo "--set methods=[isnet] --set method.isnet.recipe=published" ;;
    isnet_balanced)   echo "--set methods=[isnet] --set method.isnet.recipe=published --set method.isnet.balance=0.5" ;;
    isnet_stochastic_published) echo "--set methods=[isnet] --set method.isnet.variant=stochastic --set method.isnet.recipe=published" ;;
    isnet_sgdrop_published)     echo "--set methods=[isnet,sgdrop] --set method.isnet.recipe=published" ;;
    *) echo "unknown run '$1' in RUNS (known: standard isnet isnet_stochastic isnet_sgdrop rrr isnet_published isnet_balanced isnet_stochastic_published isnet_sgdrop_published)" >&2; return 1 ;;
  esac
}
for name in $RUNS; do overrides_for "$name" > /dev/null; done   # fail on a typo before any work

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"   # absolute: runs record their manifest path, the report reopens it
PHANTOM="$OUT/phantom"
LOGS="$OUT/logs"
mkdir -p "$LOGS"
cd "$REPO"
if [ -n "${ISNET:-}" ]; then
  read -r -a ISNET_CMD <<< "$ISNET"
else
  source scripts/ensure_venv.sh
  ISNET_CMD=(isnet)
fi

start=$SECONDS
if [ ! -f "$PHANTOM/manifest.csv" ]; then
  echo "== generating the confounded phantoms (seed $SEED, $PER_CLASS per class and site, 64 px, severity $SEVERITY)" \
       "in $PHANTOM"
  "${ISNET_CMD[@]}" phantom --scenario confounded --out "$PHANTOM" --size 64 --per-class "$PER_CLASS" \
    --seed "$SEED" --workers "$WORKERS" --severity "$SEVERITY"
  echo "$SEVERITY" > "$PHANTOM/severity"
elif [ "$(cat "$PHANTOM/severity" 2>/dev/null || echo medium)" != "$SEVERITY" ]; then
  echo "$PHANTOM holds phantoms of another severity ($(cat "$PHANTOM/severity" 2>/dev/null || echo medium));" \
       "use another OUT or delete the folder" >&2
  exit 2
else
  echo "== using the existing phantoms in $PHANTOM (delete the folder to regenerate)"
fi

declare -A RUN_ID=()
if [ "$REUSE" = 1 ] && [ -f "$OUT/runs.tsv" ]; then
  while IFS=$'\t' read -r name id; do RUN_ID[$name]=$id; done < "$OUT/runs.tsv"
fi
: > "$OUT/runs.tsv.new"
ids=()
for name in $RUNS; do
  if [ -n "${RUN_ID[$name]:-}" ]; then
    echo "== $name: reusing run ${RUN_ID[$name]}"
  else
    echo "== training $name (seed $SEED); log: $LOGS/$name.log"
    read -r -a own <<< "$(overrides_for "$name")"
    read -r -a extra <<< "${TRAIN_ARGS:-}"
    epochs=()
    [ -n "${EPOCHS:-}" ] && epochs=(--epochs "$EPOCHS")
    "${ISNET_CMD[@]}" train --config "$CONFIG" --manifest "$PHANTOM/manifest_internal.csv" --seed "$SEED" \
      --device "$DEVICE" --run-name "generalisation-s$SEED-$name" --set "train.checkpoint_dir=$OUT/checkpoints" \
      --no-progress "${own[@]}" "${epochs[@]}" "${extra[@]}" 2>&1 | tee "$LOGS/$name.log"
    RUN_ID[$name]="$(sed -n 's/^finished run \([0-9a-f]\{1,\}\):.*/\1/p' "$LOGS/$name.log" | tail -n 1)"
    if [ -z "${RUN_ID[$name]}" ]; then
      echo "no run id in $LOGS/$name.log" >&2; exit 1
    fi
  fi
  printf '%s\t%s\n' "$name" "${RUN_ID[$name]}" >> "$OUT/runs.tsv.new"
  ids+=("${RUN_ID[$name]}")
done
mv "$OUT/runs.tsv.new" "$OUT/runs.tsv"

echo "== report on the external sites"
"${ISNET_CMD[@]}" report --runs "$(IFS=,; echo "${ids[*]}")" --manifest "$PHANTOM/manifest_external.csv" \
  --out "$OUT/report.html" --checkpoint-dir "$OUT/checkpoints" --resamples "$RESAMPLES" --seed "$SEED" \
  --device "$DEVICE" 2>&1 | tee "$LOGS/report.log"

echo
echo "seed $SEED: runs (name, MLflow run id; also in $OUT/runs.tsv)"
column -t -s $'\t' "$OUT/runs.tsv" 2>/dev/null || cat "$OUT/runs.tsv"
echo "report: $OUT/report.html (numbers: $OUT/report.json)"
echo "took $((SECONDS - start)) s"
python -m isnet.tracking.provenance "$OUT/run_info.json" "SEED=$SEED SEVERITY=$SEVERITY RUNS='$RUNS' bash scripts/generalisation.sh" \
  "seed=$SEED" "severity=$SEVERITY" "per_class=$PER_CLASS" "runs=$RUNS" "epochs=${EPOCHS:-config}" \
  "train_args=${TRAIN_ARGS:-}" "seconds=$((SECONDS - start))"
