"""``isnet segmenter``: train the lung segmenter, fill a manifest's empty mask cells with it."""

from __future__ import annotations

import argparse
from pathlib import Path

#: (flag, config key, type): each flag is a shortcut for --set <key>=...
SHORTCUTS = [("--epochs", "optim.epochs", int), ("--image-size", "data.image_size", int),
             ("--batch-size", "data.batch_size", int), ("--encoder", "encoder", str), ("--lr", "optim.lr", float),
             ("--seed", "seed", int), ("--device", "device", str), ("--threads", "threads", int),
             ("--experiment", "tracking.experiment", str), ("--run-name", "tracking.run_name", str)]


def _dest(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segmenter", help="lung segmenter: train on masked images, fill empty mask cells")
    ssub = p.add_subparsers(dest="segmenter_cmd", required=True)
    t = ssub.add_parser("train", help="train a U-Net on the manifest rows that have lung masks (MLflow run)")
    t.add_argument("--manifest", type=Path, required=True)
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any SegmenterConfig value, e.g. --set postprocess.area_range=[0.1,0.6] (repeatable)")
    for flag, key, typ in SHORTCUTS:
        t.add_argument(flag, dest=_dest(key), type=typ, default=None, help=f"shortcut for --set {key}=...")
    t.set_defaults(func=_run_train)
    q = ssub.add_parser("predict", help="write a copy of a manifest whose empty mask cells are filled")
    q.add_argument("--run", required=True, help="MLflow run id of a segmenter run")
    q.add_argument("--manifest", type=Path, required=True)
    q.add_argument("--out", type=Path, required=True, help="new manifest; masks go to <out stem>_masks/ beside it")
    q.add_argument("--all", action="store_true", help="predict every row, also those that already have a mask")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    q.add_argument("--area-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="plausible lung area as a fraction of the image (default: the run's, 0.10 0.60)")
    q.add_argument("--checkpoint-dir", default="checkpoints")
    q.add_argument("--device", default="cpu")
    q.set_defaults(func=_run_predict)


def _run_train(args: argparse.Namespace) -> int:
    from isnet.segment import load_segmenter_config, train_segmenter
    from isnet.tracking import resolve_tracking_uri

    import json

    # text flags stay text (a YAML reading would turn '#1' into null, '[a]' into a list)
    overrides = list(args.overrides) + [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for _, k, _ in SHORTCUTS
                                        if (v := getattr(args, _dest(k))) is not None]
    cfg = load_segmenter_config(overrides)
    r = train_segmenter(cfg, args.manifest)
    msg = (f"finished segmenter run {r.run_id}: best epoch {r.best_epoch}, val Dice {r.val_dice:.4f}, "
           f"IoU {r.val_iou:.4f}")
    if r.test_dice is not None:
        msg += f"; test Dice {r.test_dice:.4f}, IoU {r.test_iou:.4f}"
    print(msg)
    print(f"MLflow run {r.run_id} in {resolve_tracking_uri(cfg.tracking.tracking_uri)}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from isnet.segment import fill_masks

    s = fill_masks(args.run, args.manifest, args.out, all_rows=args.all, overwrite=args.overwrite,
                   checkpoint_dir=args.checkpoint_dir, device=args.device, area_range=args.area_range)
    print(f"wrote {s.out}: {s.predicted} mask(s) predicted, {s.flagged} flagged implausible (left out of the "
          f"mask column), {s.kept} row(s) kept their mask")
    return 0
