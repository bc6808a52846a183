"""``isnet tracking sync``: send tracking records buffered while the MLflow server was unreachable."""

from __future__ import annotations

import argparse
from pathlib import Path

from isnet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tracking", help="tracking-store utilities (send buffered records)")
    tsub = p.add_subparsers(dest="tracking_command", required=True)
    s = tsub.add_parser("sync", help="send the records runs buffered while the tracking server was unreachable")
    s.add_argument("paths", nargs="*", type=Path,
                   help="buffer files or folders to search (default: the checkpoints and mlflow-buffer folders)")
    s.add_argument("--tracking-uri", default=None,
                   help="send to this store instead of the one each record was made for")
    s.set_defaults(func=_run_sync)


def _run_sync(args: argparse.Namespace) -> int:
    from isnet.tracking import BUFFER_NAME, flush_buffer, is_unreachable

    roots = args.paths or [r for r in (Path("checkpoints"), Path("mlflow-buffer")) if r.is_dir()]
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            found = sorted(root.rglob(BUFFER_NAME)) + sorted(root.rglob("mlflow-buffer/*.jsonl"))
            if root.name == "mlflow-buffer":  # a Tracker's default buffer folder: <run id>.jsonl
                found += sorted(root.glob("*.jsonl"))
            files.extend(dict.fromkeys(found))
        else:
            raise UserError(f"{root}: no such buffer file or folder")
    if not files:
        print("nothing to send: no buffered tracking records found")
        return 0
    failed = 0
    for f in files:
        try:
            sent, left = flush_buffer(f, args.tracking_uri)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            failed += 1
            print(f"{f}: server still unreachable ({str(exc)[:160]}); records kept")
            continue
        print(f"{f}: {sent} records sent")
    if failed:
        raise UserError(f"{failed} buffer file(s) could not be sent; try again when the server is reachable")
    return 0
