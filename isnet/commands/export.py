"""``isnet export``: the best model of a run as TorchScript or ONNX (probabilities out), optionally
registered in the MLflow model registry."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's best model (softmax probabilities) as TorchScript/ONNX")
    p.add_argument("--run", required=True, help="MLflow run id of a training run")
    p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript")
    p.add_argument("--out", type=Path, required=True,
                   help="model file; the preprocessing goes beside it as <stem>.preprocessing.json")
    p.add_argument("--register", metavar="NAME", default=None,
                   help="also register the model under NAME in the MLflow model registry")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from isnet.models.export import export_model, register_model
    from isnet.train.loading import load_run_model

    model, cfg = load_run_model(args.run, args.checkpoint_dir)
    side = export_model(model, cfg, args.format, args.out, run_id=args.run)
    print(f"wrote {args.out} ({args.format}, input [N, 1, {cfg.data.image_size}, {cfg.data.image_size}], "
          f"output probabilities of {list(cfg.data.classes)}) and {side}")
    if args.register:
        export_run, version = register_model(model, cfg, args.register, args.run)
        print(f"registered model {args.register!r} version {version} (logged in run {export_run})")
    return 0
