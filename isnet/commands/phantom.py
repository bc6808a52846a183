"""``isnet phantom``: generate the synthetic chest X-ray data set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from isnet.errors import UserError  # noqa: F401


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
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
