"""User strings (site names, run and experiment names, parameter and tag values) made safe for MLflow.

Site names are data: a hospital may be called ``Hôpital (Nord)``, and MLflow refuses ``(``, ``)``, ``'``,
``#``, ``+``, ``,``, ``<``, ``>`` and more in metric, parameter and tag names. Every user string that
becomes part of an MLflow *name* goes through :func:`key_part` (here and nowhere else); the real string is
kept beside it (a tag and a JSON artifact, see :meth:`isnet.tracking.Tracker.log_site_keys`).

:func:`key_part` keeps a name that is already plain ASCII (letters, digits, ``_``, ``-``; at most 64
characters) unchanged, so ordinary site names keep their ordinary metric names (``test_accuracy_site_a``).
Anything else becomes an ASCII slug of it plus 8 hex digits of its SHA-256: ``Hôpital (Nord)`` →
``Hopital_Nord-1b6e3c1f``; two names never share a key (:func:`site_keys` checks).

Run and experiment names may hold any printable text; :func:`clean_name` removes control characters
(PostgreSQL refuses NUL) and cuts them to what every MLflow backend stores (runs: 250 characters,
experiments: 256). Parameter and tag values are cleaned the same way (:func:`clean_value`).

This module imports nothing heavy: the config schema uses it.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata
from typing import Iterable

#: what MLflow accepts in metric/param/tag names (outside Windows), and their length limit
MLFLOW_NAME = re.compile(r"^[/\w.\- :]*$")
MAX_KEY_LENGTH = 250
MAX_RUN_NAME_LENGTH = 250       # runs.name is VARCHAR(250) in MLflow's SQL stores
MAX_EXPERIMENT_NAME_LENGTH = 256  # experiments.name is VARCHAR(256)
MAX_PARAM_LENGTH = 500          # ours (MLflow allows 6000): a parameter is a value to read, not a document
MAX_TAG_LENGTH = 8000

_PLAIN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def key_part(text: str) -> str:
    """``text`` as a piece of an MLflow metric/param/tag name (see the module docstring)."""
    text = str(text)
    return text if _PLAIN.match(text) else _hashed(text)


def _hashed(text: str, digits: int = 8) -> str:
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", ascii_).strip("_")[:40] or "x"
    return f"{slug}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:digits]}"


def site_keys(names: Iterable[str]) -> dict[str, str]:
    """{real name: key} for a set of site names, keys distinct (a clash would merge two sites' metrics):
    a plain name that happens to equal another name's key makes every key the hashed form."""
    names = sorted(set(map(str, names)))
    out = {n: key_part(n) for n in names}
    digits = 8
    while len(set(out.values())) != len(out):
        out = {n: _hashed(n, digits) for n in names}
        digits *= 2
    return out


def is_valid_key(key: str) -> bool:
    """Whether MLflow accepts ``key`` as a metric, parameter or tag name on every backend."""
    if not key or len(key) > MAX_KEY_LENGTH or not MLFLOW_NAME.match(key) or not key.isascii():
        return False
    norm = posixpath.normpath(key)
    return not (norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"))


def safe_key(key: str) -> str:
    """``key`` itself when MLflow takes it, else its :func:`key_part` (a last line of defence: names built
    from user strings are escaped where they are built)."""
    return key if is_valid_key(key) else key_part(key)


def clean_value(text: object, limit: int = MAX_TAG_LENGTH) -> str:
    """A parameter or tag value: control characters other than tab and newline shown as ``\\xNN``; cut to
    ``limit`` characters."""
    s = str(text)
    s = _CONTROL.sub(lambda m: m.group() if m.group() in "\t\n" else f"\\x{ord(m.group()):02x}", s)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def clean_name(text: str, limit: int) -> str:
    """A run or experiment name: control characters become spaces, surrounding spaces go, cut to ``limit``."""
    s = _CONTROL.sub(" ", str(text)).strip()
    return s[:limit]


def name_problem(text: str, what: str, limit: int) -> str | None:
    """Why ``text`` cannot be used as a run/experiment name (None when it can): config validation says so
    before anything is written."""
    if not str(text).strip():
        return f"{what} must not be empty"
    bad = sorted(set(_CONTROL.findall(str(text))))
    if bad:
        return f"{what} contains control character(s) {', '.join(repr(c) for c in bad)}"
    if len(text) > limit:
        return f"{what} is {len(text)} characters long; MLflow stores at most {limit}"
    return None
