"""``isnet manifest``: manifest tools (validate, build from a public data set layout)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from isnet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="manifest tools")
    msub = p.add_subparsers(dest="manifest_cmd", required=True)
    v = msub.add_parser("validate", help="check every row of a manifest and report all problems at once")
    v.add_argument("manifest", type=Path)
    v.add_argument("--classes", default="normal,covid,tb", help="comma-separated class names")
    v.add_argument("--require-masks", action="store_true", help="every row must have a lung mask")
    v.set_defaults(func=_run_manifest_validate)
    from isnet.data.builders import DESCRIPTIONS

    b = msub.add_parser("build", help="write a manifest for a public data set layout (or a folder per class)",
                        description="layouts:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(DESCRIPTIONS.items())),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("layout", choices=sorted(DESCRIPTIONS), help="the data set's folder layout")
    b.add_argument("root", type=Path, help="the data set's top folder")
    b.add_argument("--out", type=Path, required=True, help="manifest CSV to write (derived files go beside it)")
    b.add_argument("--site", default=None, help="site name for every row (default: the layout's own)")
    b.add_argument("--label-map", action="append", default=[], metavar="RAW=CLASS",
                   help="override the layout's label table; RAW= skips that label (repeatable)")
    b.add_argument("--mask-dir", type=Path, default=None,
                   help="folders layout: lung masks with the images' relative paths")
    b.add_argument("--classes", default="normal,covid,tb", help="comma-separated class names for the validation")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    b.add_argument("--no-validate", action="store_true", help="skip validating the written manifest")
    b.set_defaults(func=_run_manifest_build)


def _run_manifest_build(args: argparse.Namespace) -> int:
    from isnet.data.builders import build_manifest, parse_label_map, write_manifest_csv
    from isnet.data.manifest import read_manifest, summarize, validate_manifest

    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} already exists; pass --overwrite to replace it")
    result = build_manifest(args.layout, args.root, args.out, label_map=parse_label_map(args.label_map),
                            site=args.site, mask_dir=args.mask_dir)
    write_manifest_csv(result.frame, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(result.frame)} rows from {args.layout} layout at {args.root}")
    if result.skipped:
        skipped = ", ".join(f"{k} x{v}" for k, v in sorted(result.skipped.items()))
        print(f"skipped (label not mapped to a class): {skipped}")
    for note in result.notes[:20]:
        print(f"note: {note}")
    if args.no_validate:
        return 0
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    df = read_manifest(args.out)
    report = validate_manifest(df, args.out, classes)
    print(summarize(df))
    return _exit_with_problems(report.problems)


def _exit_with_problems(problems: list[str]) -> int:
    """Print every validation problem on stderr; exit code 1 when there are any."""
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("no problems found")
    return 0


def _run_manifest_validate(args: argparse.Namespace) -> int:
    from isnet.data.manifest import read_manifest, summarize, validate_manifest

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    df = read_manifest(args.manifest)
    report = validate_manifest(df, args.manifest, classes, require_masks=args.require_masks)
    print(f"{args.manifest}: {summarize(df)}")
    return _exit_with_problems(report.problems)
