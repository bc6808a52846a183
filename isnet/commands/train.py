"""``isnet train``: train a classifier from a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from isnet.errors import UserError  # noqa: F401


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--run-id-file", type=Path, default=None, metavar="PATH",
                   help="write the run id to PATH when training ends (for scripts: no parsing of the output)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel training on N processes of this machine (one per GPU; gloo on CPU): "
                        "re-launches itself through torchrun")
    p.set_defaults(func=_run_train)


def _launch_torchrun(nproc: int) -> int:
    """``isnet train --nproc N ...`` → ``python -m torch.distributed.run --standalone --nproc_per_node N -m isnet
    train ...`` with the same arguments minus ``--nproc`` (``--standalone``: a free local rendezvous port)."""
    import os
    import subprocess
    import sys

    argv, rest = [], list(sys.argv[1:])
    while rest:
        a = rest.pop(0)
        if a == "--nproc":
            rest.pop(0)
        elif not a.startswith("--nproc="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "isnet", *argv]
    print("launching: " + " ".join(cmd[1:]), flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; say it instead of warning about it
    return subprocess.call(cmd, env=env)


def _run_train(args: argparse.Namespace) -> int:
    import json
    import os

    if args.nproc is not None:
        if args.nproc < 1:
            raise UserError(f"--nproc must be at least 1, got {args.nproc}")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("--nproc given inside a torchrun launch; use one of them")
        if args.nproc > 1:
            return _launch_torchrun(args.nproc)
    from isnet.config import load_config
    from isnet.train.run import train

    overrides = list(args.overrides)
    for key in ("optim.epochs", "data.batch_size", "data.image_size", "model.backbone", "optim.lr", "train.seed",
                "train.device", "tracking.experiment", "tracking.run_name"):
        value = getattr(args, key)
        if value is not None:  # text flags stay text (a YAML reading would turn '#1' into null, '[a]' into a list)
            overrides.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    cfg = load_config(args.config, overrides)
    from isnet.tracking import DEFAULT_URI, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)  # as configured (the run resolves relative paths)
    result = train(cfg, args.manifest, resume=args.resume, progress=False if args.no_progress else None)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return 0
    if args.run_id_file is not None:
        _write_run_id(args.run_id_file, result.run_id)
    if result.already_finished:
        print(f"run {result.run_id} had already finished ({result.epochs_run} epochs, best epoch {result.best_epoch}); "
              f"nothing to do, nothing written")
        return 0
    t = result.test_metrics
    print(f"finished run {result.run_id}: {result.epochs_run} epochs, best epoch {result.best_epoch} "
          f"(val loss {result.best_val_loss:.4f})")
    if t:
        print(f"test accuracy {t['test_accuracy']:.3f}, balanced accuracy {t['test_balanced_accuracy']:.3f}, "
              f"macro AUC {t['test_macro_auc']:.3f}")
    print(f"MLflow run {result.run_id} in {uri}" + (f"  (view: mlflow ui --backend-store-uri {uri})"
                                                    if uri == DEFAULT_URI else ""))
    return 0


def _write_run_id(path: Path, run_id: str) -> None:
    """The run id and a newline, written atomically: a script never reads half an id."""
    from isnet.files import atomic_write_text

    atomic_write_text(path, run_id + "\n")
