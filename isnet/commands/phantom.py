"""``isnet phantom``: generate the synthetic chest X-ray data set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from isnet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom", help="generate the synthetic chest X-ray data set (images, masks, manifest)",
        description="Generate the synthetic chest X-ray data set (images, masks, manifest.csv); see docs/phantom.md.",
        epilog="scenarios: 'default' = --sites sites, every class --per-class times at each, empty split column. "
               "'confounded' = class, site and background markers go together, as in real COVID/TB "
               "collections: training sites site_a/site_b/site_c hold 70% covid/tb/normal and stamp their own "
               "marker (circle/triangle/square) on 90% of that class and 10% of the others (--severity); "
               "external sites "
               "external_clean (no markers), external_unbiased (markers independent of the class) and "
               "external_reversed (each class carries another class's marker) have a uniform class mix. "
               "Every site has 3 x --per-class images; training sites are split train/val/test, external "
               "sites test. Also writes manifest_internal.csv (training sites) and manifest_external.csv, "
               "and a 'marker' column (the marker drawn on each image).")
    p.add_argument("--out", required=True, type=Path, help="output folder (manifest.csv is written there)")
    p.add_argument("--scenario", choices=["default", "confounded"], default="default",
                   help="default: independent sites; confounded: class-correlated training sites plus external "
                        "test sites (see below)")
    p.add_argument("--sites", type=int, default=3, help="number of acquisition sites (default scenario)")
    p.add_argument("--per-class", type=int, default=200,
                   help="images per class and site (confounded: on average; each site has 3 x this many)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--lesion-contrast", type=float, default=None, help="lesion visibility (default: calibrated)")
    p.add_argument("--class-marker-rate", type=float, default=0.0,
                   help="probability of a class-specific background marker (a built-in shortcut); 0 = none "
                        "(default scenario; the confounded scenario sets its own markers)")
    p.add_argument("--severity", choices=["low", "medium", "high"], default=None,
                   help="confounded scenario: how strongly the site markers give the class away (marker size, "
                        "contrast and rate on the dominant class): low 0.03 of the side / 0.5 / 70%%, medium (the "
                        "default) 0.05 / 1.0 / 90%%, high 0.08 / 1.0 / 100%%")
    p.add_argument("--marker-size", type=float, default=None,
                   help="confounded scenario: marker side as a fraction of the image side (replaces the severity's)")
    p.add_argument("--marker-contrast", type=float, default=None,
                   help="confounded scenario: marker stroke intensity in [0.05, 1] (replaces the severity's)")
    p.add_argument("--marker-rate", type=float, default=None,
                   help="confounded scenario: probability of the site marker on its dominant class, 1 - this on the "
                        "others, in [0.5, 1] (replaces the severity's)")
    p.add_argument("--workers", type=int, default=1, help="processes used for rendering")
    p.set_defaults(func=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from isnet.data.phantom import SEVERITIES, generate_dataset

    severity = SEVERITIES[args.severity or "medium"]
    knobs = {"size": args.marker_size, "contrast": args.marker_contrast, "rate": args.marker_rate}
    severity = replace(severity, **{k: v for k, v in knobs.items() if v is not None})
    if args.scenario != "confounded" and (args.severity or any(v is not None for v in knobs.values())):
        raise UserError("phantom: --severity and --marker-* apply to --scenario confounded only")
    kwargs = dict(sites=args.sites, per_class=args.per_class, seed=args.seed, size=args.size,
                  class_marker_rate=args.class_marker_rate, workers=args.workers, progress=sys.stderr.isatty(),
                  scenario=args.scenario, severity=severity)
    if args.lesion_contrast is not None:
        kwargs["lesion_contrast"] = args.lesion_contrast
    try:
        path = generate_dataset(args.out, **kwargs)
    except ValueError as exc:
        raise UserError(f"phantom: {exc}") from None
    print(f"wrote {path}")
    return 0
