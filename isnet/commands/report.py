"""``isnet report``: external-site generalisation report of trained runs (HTML + JSON, logged to MLflow)."""

from __future__ import annotations

import argparse
from pathlib import Path

from isnet.errors import UserError  # noqa: F401


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="external-site generalisation report of trained runs (HTML + JSON)")
    p.add_argument("--runs", required=True, help="comma-separated MLflow run ids of training runs")
    p.add_argument("--manifest", type=Path, required=True, help="external test manifest (CSV/Parquet)")
    p.add_argument("--out", type=Path, required=True, help="HTML file to write; the JSON goes beside it")
    p.add_argument("--sites", default=None,
                   help="comma-separated sites to keep from the manifest (e.g. a phantom site held out of training)")
    p.add_argument("--resamples", type=int, default=1000, help="patient-level bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bins", type=int, default=10, help="confidence bins for ECE and the reliability diagram")
    p.add_argument("--gallery", type=int, default=3, help="heatmaps per site, method and kind (correct/wrong)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from isnet.evaluate.report_run import run_report

    if args.resamples < 10:
        raise UserError(f"report: --resamples must be at least 10, got {args.resamples}")
    if args.bins < 1:
        raise UserError(f"report: --bins must be at least 1, got {args.bins}")
    sites = [s for s in args.sites.split(",")] if args.sites else None
    rep = run_report(args.runs.split(","), args.manifest, args.out, sites=sites, n_resamples=args.resamples,
                     seed=args.seed, n_bins=args.bins, gallery_size=args.gallery, checkpoint_dir=args.checkpoint_dir,
                     batch_size=args.batch_size, device=args.device)
    for m in rep["methods"]:
        v = rep["metrics"][m["name"]]["overall"]
        gap = rep["gap"][m["name"]]["gap"]["macro_auc"]["difference"]
        print(f"{m['name']}: macro AUC {v['values']['macro_auc']:.3f} "
              f"[{v['ci']['macro_auc'][0]:.3f}, {v['ci']['macro_auc'][1]:.3f}], balanced accuracy "
              f"{v['values']['balanced_accuracy']:.3f}, ECE {v['values']['ece']:.3f}, background share "
              f"{v['values']['bg_share_mean']:.3f}; AUC gap to its test split {gap:+.3f}")
    for w in rep.get("warnings", []):
        print(f"warning: {w}")
    print(f"wrote {rep['html_path']} and {rep['json_path']} (MLflow run {rep['report_run_id']}, experiment reports)")
    return 0
