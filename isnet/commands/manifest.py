"""``isnet manifest``: manifest tools (validate; builders come here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from isnet.errors import UserError  # noqa: F401


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="manifest tools")
    msub = p.add_subparsers(dest="manifest_cmd", required=True)
    v = msub.add_parser("validate", help="check every row of a manifest and report all problems at once")
    v.add_argument("manifest", type=Path)
    v.add_argument("--classes", default="normal,covid,tb", help="comma-separated class names")
    v.add_argument("--require-masks", action="store_true", help="every row must have a lung mask")
    v.set_defaults(func=_run_manifest_validate)


def _run_manifest_validate(args: argparse.Namespace) -> int:
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
