"""The ``isnet`` command: one entry point, one subcommand per workflow.

User errors (bad config key, missing manifest or file, unknown label...) end with one line on stderr and
exit code 2; nothing already written is removed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from isnet.errors import UserError


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="generate the synthetic chest X-ray data set (images, masks, manifest)")
    p.add_argument("--out", required=True, type=Path, help="output folder (manifest.csv is written there)")
    p.add_argument("--sites", type=int, default=3, help="number of acquisition sites")
    p.add_argument("--per-class", type=int, default=200, help="images per class and site")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--lesion-contrast", type=float, default=None, help="lesion visibility (default: calibrated)")
    p.add_argument("--class-marker-rate", type=float, default=0.0,
                   help="probability of a class-specific background marker (a built-in shortcut); 0 = none")
    p.add_argument("--workers", type=int, default=1, help="processes used for rendering")
    p.set_defaults(func=_cmd_phantom)


def _cmd_phantom(args: argparse.Namespace) -> int:
    from isnet.data.phantom import generate_dataset

    kwargs = dict(sites=args.sites, per_class=args.per_class, seed=args.seed, size=args.size,
                  class_marker_rate=args.class_marker_rate, workers=args.workers, progress=sys.stderr.isatty())
    if args.lesion_contrast is not None:
        kwargs["lesion_contrast"] = args.lesion_contrast
    try:
        path = generate_dataset(args.out, **kwargs)
    except ValueError as exc:
        raise UserError(f"phantom: {exc}") from None
    print(f"wrote {path}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier from a manifest (tracked in MLflow)")
    p.add_argument("--config", type=Path, default=None, help="YAML config (pipelines/*.yaml); defaults if omitted")
    p.add_argument("--manifest", type=Path, required=True, help="manifest CSV/Parquet")
    p.add_argument("--resume", metavar="RUN_ID", default=None, help="continue a stopped run from its last checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set optim.lr=3e-4 (repeatable)")
    for flag, key, typ in [("--epochs", "optim.epochs", int), ("--batch-size", "data.batch_size", int),
                           ("--image-size", "data.image_size", int), ("--backbone", "model.backbone", str),
                           ("--lr", "optim.lr", float), ("--seed", "train.seed", int),
                           ("--device", "train.device", str), ("--experiment", "tracking.experiment", str),
                           ("--run-name", "tracking.run_name", str)]:
        p.add_argument(flag, dest=key, type=typ, default=None, help=f"shortcut for --set {key}=...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from isnet.config import load_config
    from isnet.train.run import train

    overrides = list(args.overrides)
    for key in ("optim.epochs", "data.batch_size", "data.image_size", "model.backbone", "optim.lr", "train.seed",
                "train.device", "tracking.experiment", "tracking.run_name"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    result = train(cfg, args.manifest, resume=args.resume, progress=False if args.no_progress else None)
    t = result.test_metrics
    print(f"finished run {result.run_id}: {result.epochs_run} epochs, best epoch {result.best_epoch} "
          f"(val loss {result.best_val_loss:.4f})")
    if t:
        print(f"test accuracy {t['test_accuracy']:.3f}, balanced accuracy {t['test_balanced_accuracy']:.3f}, "
              f"macro AUC {t['test_macro_auc']:.3f}")
    from isnet.tracking import DEFAULT_URI, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    print(f"MLflow run {result.run_id} in {uri}" + (f"  (view: mlflow ui --backend-store-uri {uri})"
                                                    if uri == DEFAULT_URI else ""))
    return 0


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="manifest tools")
    msub = p.add_subparsers(dest="manifest_cmd", required=True)
    v = msub.add_parser("validate", help="check every row of a manifest and report all problems at once")
    v.add_argument("manifest", type=Path)
    v.add_argument("--classes", default="normal,covid,tb", help="comma-separated class names")
    v.add_argument("--require-masks", action="store_true", help="every row must have a lung mask")
    v.set_defaults(func=_cmd_manifest_validate)


def _cmd_manifest_validate(args: argparse.Namespace) -> int:
    from isnet.data.manifest import read_manifest, validate_manifest

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    df = read_manifest(args.manifest)
    report = validate_manifest(df, args.manifest, classes, require_masks=args.require_masks)
    summary = df.groupby(["site", "label"]).size().unstack(fill_value=0)
    print(f"{args.manifest}: {len(df)} rows\n{summary.to_string()}")
    if report.problems:
        print(f"{len(report.problems)} problem(s):", file=sys.stderr)
        for line in report.problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("no problems found")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="LRP heatmaps of a trained run on a manifest (overlays + CSV)")
    p.add_argument("--run", required=True, help="MLflow run id of a training run")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder (overlays/, relevance.csv)")
    p.add_argument("--split", default=None, help="only rows of this split (train/val/test)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from isnet.evaluate.explain import explain_run, summarise

    table = explain_run(args.run, args.manifest, args.out, split=args.split, max_images=args.max_images,
                        checkpoint_dir=args.checkpoint_dir)
    print(summarise(table))
    print(f"wrote {args.out / 'relevance.csv'} and {len(table)} overlays in {args.out / 'overlays'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isnet", description="Chest X-ray classifiers that look at the lungs.")
    parser.add_argument("--version", action="version", version=f"isnet {__import__('isnet').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_phantom(sub)
    _add_train(sub)
    _add_manifest(sub)
    _add_explain(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"isnet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("isnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
