"""The ``isnet`` command: one entry point, one subcommand per workflow (modules in ``isnet.commands``).

User errors (bad config key, missing manifest or file, unknown label...) end with one line on stderr and
exit code 2; nothing already written is removed. A new workflow adds a module with ``add_parser(sub)`` to
``isnet/commands/`` and its name to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from isnet.errors import UserError

COMMANDS = ("phantom", "manifest", "train", "explain", "compare", "predict", "export", "stress-test", "report",
            "segmenter", "bench", "tracking")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isnet", description="Chest X-ray classifiers that look at the lungs.")
    parser.add_argument("--version", action="version", version=f"isnet {__import__('isnet').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"isnet.commands.{name.replace('-', '_')}").add_parser(sub)
    return parser


def _user_error_cause(exc: BaseException) -> UserError | None:
    """The UserError that ``exc`` was raised from, if any (a data transform's error re-raised by a library)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"isnet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RuntimeError as exc:  # MONAI wraps what a transform raises ("applying transform ..."): unwrap user errors
        user = _user_error_cause(exc)
        if user is None:
            raise
        print(f"isnet: error: {user}", file=sys.stderr)
        return user.exit_code
    except KeyboardInterrupt:
        print("isnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
