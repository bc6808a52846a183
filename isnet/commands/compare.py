"""``isnet compare``: trained runs side by side (logged test metrics, background share now, one heatmap figure)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="runs side by side: test metrics, background relevance share, heatmap figure")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_ID", help="MLflow run ids of training runs")
    p.add_argument("--manifest", type=Path, required=True, help="the manifest the runs were trained on")
    p.add_argument("--out", type=Path, required=True, help="heatmap figure (PNG)")
    p.add_argument("--labels", default=None, help="comma-separated, one per run (e.g. standard,ISNet)")
    p.add_argument("--split", default="test", help="split of the figure's images and of the second share column")
    p.add_argument("--images", type=int, default=6, help="images in the figure, split between the classes")
    p.add_argument("--json", type=Path, default=None, help="also write the table's rows as JSON")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    import json

    from isnet.evaluate.compare import compare_runs, format_table, row_dicts

    labels = args.labels.split(",") if args.labels is not None else None
    result = compare_runs(args.runs, args.manifest, args.out, labels=labels, split=args.split, images=args.images,
                          checkpoint_dir=args.checkpoint_dir)
    print(format_table(result))
    for note in result.notes:
        print(f"note: {note}")
    print(f"heatmap figure ({result.split} images): {result.figure}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(row_dicts(result), indent=1) + "\n")
        print(f"table as JSON: {args.json}")
    return 0
