"""``isnet stress-test``: inject a synthetic background bias and measure which methods fall for it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from isnet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stress-test", help="bias-injection stress test: train each method on a biased split, "
                                           "score on clean / bias-aligned / bias-flipped test sets")
    p.add_argument("--config", type=Path, default=None, help="stress-test YAML (pipelines/stress_test.yaml)")
    p.add_argument("--manifest", type=Path, required=True, help="manifest CSV/Parquet with lung masks")
    p.add_argument("--bias", action="append", default=[], metavar="KIND[:ARG]",
                   help="replace the config's biases (repeatable): shape:triangle|square|circle, text:TOKEN, "
                        "patch, border, noise")
    p.add_argument("--target-class", default=None, help="the class the bias is correlated with")
    p.add_argument("--strength", default=None, metavar="S1,S2,...", help="correlation strengths in [0, 1]")
    p.add_argument("--methods", default=None, metavar="M1,M2+M3,...",
                   help="method specs, comma-separated; '+' combines methods, e.g. standard,isnet,isnet+sgdrop")
    p.add_argument("--seeds", default=None, metavar="0,1,2", help="training seeds")
    p.add_argument("--out", default=None, help="output folder (results.csv, plots, summary.md); resumable")
    p.add_argument("--report", default=None, help="also write the summary table to this Markdown file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any stress-config value, e.g. --set train.optim.epochs=5 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {what} {text!r}: expected comma-separated numbers, e.g. 0.5,0.8,1.0") from None


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {what} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def build_config(args: argparse.Namespace):
    from isnet.evaluate.stress.config import BiasConfig, load_stress_config
    from isnet.data.bias import parse_bias
    from isnet.evaluate.stress import parse_method_spec

    cfg = load_stress_config(args.config, args.overrides)
    updates: dict = {}
    if args.bias:
        template = cfg.biases[0].model_dump()  # --bias keeps the config's size/intensity/region/margin
        updates["biases"] = [BiasConfig(**{**template, **_bias_fields(parse_bias(t))}) for t in args.bias]
    if args.methods is not None:
        specs = [m.strip() for m in args.methods.split(",")]
        if not any(specs) or any(not m for m in specs):
            raise UserError(f"bad --methods {args.methods!r}: expected comma-separated method specs, "
                            f"e.g. standard,isnet,isnet+sgdrop")
        for m in specs:
            parse_method_spec(m)
        updates["methods"] = specs
    if args.strength is not None:
        updates["strengths"] = _floats(args.strength, "--strength")
    if args.seeds is not None:
        updates["seeds"] = _ints(args.seeds, "--seeds")
    if args.target_class is not None:
        updates["target_class"] = args.target_class
    if args.out is not None:
        updates["out_dir"] = args.out
    if args.report is not None:
        updates["report"] = args.report
    if updates:
        from pydantic import ValidationError

        from isnet.config.load import _describe
        from isnet.evaluate.stress.config import StressConfig
        from isnet.errors import ConfigError

        raw = cfg.model_dump()
        raw.update(updates)
        try:
            cfg = StressConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError("invalid stress-test options: " + "; ".join(_describe(e) for e in exc.errors())) from None
    for m in cfg.methods:
        parse_method_spec(m)
    return cfg


def _bias_fields(spec) -> dict:
    return {"kind": spec.kind, "shape": spec.shape, "text": spec.text}


def _write_run_info(cfg, out: Path) -> None:
    """run_info.json beside results.csv: the command, the resolved sweep config, the commit and the machine, so
    that a committed copy of the two files is a complete result (scripts/results.py reads them)."""
    from isnet.tracking.provenance import write_run_info

    write_run_info(out / "run_info.json", "isnet " + " ".join(sys.argv[1:]), stress=cfg.model_dump(mode="json"))


def _run(args: argparse.Namespace) -> int:
    from isnet.evaluate.stress import StressTest

    cfg = build_config(args)
    _write_run_info(cfg, Path(cfg.out_dir))
    summary = StressTest(cfg, args.manifest, progress=False if args.no_progress else None).run()
    text = (Path(cfg.out_dir) / "summary.md").read_text()
    print("\nstress-test summary\n" + text)
    print(f"tidy results: {Path(cfg.out_dir) / 'results.csv'}; plot: {Path(cfg.out_dir) / 'drop_vs_strength.png'}")
    return 0 if len(summary) else 1
