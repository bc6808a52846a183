"""``isnet explain``: LRP heatmaps of a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from isnet.errors import UserError  # noqa: F401


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="LRP heatmaps of a trained run on a manifest (overlays + CSV)")
    p.add_argument("--run", required=True, help="MLflow run id of a training run")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder (overlays/, relevance.csv)")
    p.add_argument("--split", default=None, help="only rows of this split (train/val/test)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.set_defaults(func=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from isnet.evaluate.explain import explain_run, summarise

    table = explain_run(args.run, args.manifest, args.out, split=args.split, max_images=args.max_images,
                        checkpoint_dir=args.checkpoint_dir)
    print(summarise(table))
    print(f"wrote {args.out / 'relevance.csv'} and {len(table)} overlays in {args.out / 'overlays'}")
    return 0
