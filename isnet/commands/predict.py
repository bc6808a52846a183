"""``isnet predict``: class probabilities (and optionally LRP heatmaps) of a trained run on new images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict new (unlabelled) images with a trained run: probabilities CSV")
    p.add_argument("--run", required=True, help="MLflow run id of a training run")
    p.add_argument("--manifest", type=Path, required=True,
                   help="CSV/Parquet with an 'image' column (label, mask optional)")
    p.add_argument("--out", type=Path, required=True, help="predictions CSV; unusable rows go to <stem>.errors.csv")
    p.add_argument("--heatmaps", type=Path, default=None,
                   help="folder for one LRP heatmap PNG per image; adds bg_share (with a lung mask) to the CSV")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from isnet.errors import UserError
    from isnet.evaluate.predict import predict_run, summarise

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    result = predict_run(args.run, args.manifest, args.out, heatmaps=args.heatmaps, device=args.device,
                         batch_size=args.batch_size, checkpoint_dir=args.checkpoint_dir)
    for e in result.errors.itertuples(index=False):
        print(f"isnet: warning: row {e.row} ({e.image}) not predicted: {e.error}", file=sys.stderr)
    if result.errors_path is not None:
        print(f"isnet: warning: {len(result.errors)} row(s) not predicted; listed in {result.errors_path}",
              file=sys.stderr)
    print(summarise(result))
    return 0
