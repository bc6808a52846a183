#!/usr/bin/env bash
# The shortcut matrix (docs/stress-test.md, "The shortcut matrix"): methods × the five bias kinds, strength 1.0, 64 px,
# pipelines/stress_test.yaml, three seeds. One call runs one group of methods on the listed kinds, one
# `isnet stress-test` per kind (resumable: run the same call again after an interruption), and copies each
# finished sweep into results/stress/ (scripts/results.py --add), where docs/results.md's matrix is built from.
#   bash scripts/stress_matrix.sh GROUP [KIND...]
# GROUP (the methods of one call; the ISNet recipe is set per group, because it is one key of the sweep):
#   baselines  standard, masked_input, rrr, sgdrop, reldrop, group_dro
#   isnet      isnet, isnet+sgdrop with method.isnet.recipe=warm_start (the recipe of the other pipelines)
#   published  isnet with method.isnet.recipe=published
#   ours       bg_swap, bg_consistency, isnet+bg_swap (warm_start)
# KIND: triangle text patch noise border (default: all five), each on its usual target class.
# Environment: SEEDS [0,1,2]  MANIFEST [data/ph64s/manifest.csv, generated if missing]  METHODS [the group's]
#   THREADS [1]  EXTRA [] more arguments for isnet stress-test  ISNET [] the command that runs isnet.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
GROUP="${1:?usage: stress_matrix.sh GROUP [KIND...]}"
shift
KINDS="${*:-triangle text patch noise border}"
SEEDS="${SEEDS:-0,1,2}"
MANIFEST="${MANIFEST:-data/ph64s/manifest.csv}"
THREADS="${THREADS:-1}"
EXTRA="${EXTRA:-}"

case "$GROUP" in
  baselines) DEFAULT_METHODS="standard,masked_input,rrr,sgdrop,reldrop,group_dro"; RECIPE=warm_start ;;
  isnet)     DEFAULT_METHODS="isnet,isnet+sgdrop"; RECIPE=warm_start ;;
  published) DEFAULT_METHODS="isnet"; RECIPE=published ;;
  ours)      DEFAULT_METHODS="bg_swap,bg_consistency,isnet+bg_swap"; RECIPE=warm_start ;;
  *) echo "unknown GROUP '$GROUP' (baselines | isnet | published | ours)" >&2; exit 2 ;;
esac
METHODS="${METHODS:-$DEFAULT_METHODS}"

bias_of() {  # KIND -> "BIAS TARGET"
  case "$1" in
    triangle) echo "shape:triangle covid" ;;
    text)     echo "text:PORT tb" ;;
    patch)    echo "patch normal" ;;
    noise)    echo "noise normal" ;;
    border)   echo "border normal" ;;
    *) echo "unknown KIND '$1' (triangle text patch noise border)" >&2; return 1 ;;
  esac
}
for kind in $KINDS; do bias_of "$kind" > /dev/null; done   # fail on a typo before any work

if [ -z "${ISNET:-}" ]; then
  source "$REPO/scripts/ensure_venv.sh"
  ISNET=isnet
fi
if [ ! -f "$MANIFEST" ]; then
  $ISNET phantom --out "$(dirname "$MANIFEST")" --per-class 150 --size 64 --seed 0
fi

for kind in $KINDS; do
  read -r bias target <<< "$(bias_of "$kind")"
  out="runs/stress/${kind}_${target}_${GROUP}"
  echo "== $GROUP on $kind ($bias on $target): $METHODS -> $out"
  $ISNET stress-test --config pipelines/stress_test.yaml --manifest "$MANIFEST" --bias "$bias" \
    --target-class "$target" --strength 1.0 --seeds "$SEEDS" --methods "$METHODS" --out "$out" \
    --set train.data.image_size=64 --set "train.train.threads=$THREADS" \
    --set "train.method.isnet.recipe=$RECIPE" --no-progress $EXTRA
  python scripts/results.py --add "$out"
done
