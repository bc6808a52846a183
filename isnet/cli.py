"""The ``isnet`` command: one entry point, one subcommand per workflow (modules in ``isnet.commands``).

User errors (bad config key, missing manifest or file, unknown label...) end with one line on stderr and
exit code 2; nothing already written is removed. A new workflow adds a module with ``add_parser(sub)`` to
``isnet/commands/`` and its name to ``COMMANDS``.

The library reports through the ``isnet`` logger and prints nothing itself; while a command runs, its progress
(INFO) goes to stdout and its warnings to stderr, each record as its bare message, and a Python warning raised
in isnet's own code shows as one line ``warning: <message>`` on stderr (no source path, no code line).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings
from typing import Iterator, Sequence

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


class _StandardStream(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` or ``sys.stderr`` is at each record, as ``print`` does (a
    redirected or captured stream is followed), flushed after each record."""

    def __init__(self, stream_name: str) -> None:
        self._stream_name = stream_name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it: the stream is looked up at each record
        pass


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _from_isnet(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


@contextlib.contextmanager
def _command_logging() -> Iterator[None]:
    """While a command runs: the ``isnet`` logger's INFO records on stdout, WARNING and above on stderr, each as its
    message; Python warnings raised in isnet's code as one line on stderr through the same logger (others as
    Python shows them). Everything is put back afterwards (``main`` may be called in process, e.g. by tests)."""
    logger = logging.getLogger("isnet")
    out, err = _StandardStream("stdout"), _StandardStream("stderr")
    out.setLevel(logging.INFO)
    out.addFilter(_BelowWarning())
    err.setLevel(logging.WARNING)
    for h in (out, err):
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a handler some dependency put on the root logger would print every line twice
    show = warnings.showwarning

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if file is None and _from_isnet(filename):
            logger.warning("warning: %s", message)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_warning
    try:
        yield
    finally:
        warnings.showwarning = show
        for h in (out, err):
            logger.removeHandler(h)
        logger.setLevel(level)
        logger.propagate = propagate


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    with _command_logging():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
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
