"""Cells of a stress-test sweep and their bookkeeping: method specs, the fingerprint that makes results
comparable across invocations, and the tidy results CSV."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from isnet.config.load import config_to_dict
from isnet.config.registry import check_combination, method_names, method_specs
from isnet.evaluate.stress.config import StressConfig
from isnet.errors import UserError
from isnet.files import atomic_write


TEST_SETS = ("clean", "aligned", "flipped")
CSV_COLUMNS = ["method", "strength", "seed", "run_id", "test_set", "metric", "value"]
STATE_FILE = "sweep.json"

# -- method specs -----------------------------------------------------------------------------------
def parse_method_spec(spec: str) -> list[str]:
    """``"isnet+sgdrop"`` → ``["isnet", "sgdrop"]``, checked against the method registry like a config's
    ``methods:`` list; a bad spec is a ``UserError`` that lists the registered methods."""
    names = [n.strip() for n in spec.split("+")]
    known = method_names()
    if not spec.strip() or any(not n for n in names):
        raise UserError(f"bad method spec {spec!r}: use names joined by '+', e.g. isnet+sgdrop; "
                        f"known: {', '.join(known)}")
    try:
        return check_combination(names)
    except ValueError as exc:
        raise UserError(f"method spec {spec!r}: {exc}") from None


@dataclass(frozen=True)
class Cell:
    method: str
    strength: float
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.method, f"{self.strength:g}", int(self.seed))

    @property
    def name(self) -> str:
        return f"{self.method}_s{self.strength:g}_seed{self.seed}"


def cells_of(cfg: StressConfig) -> list[Cell]:
    return [Cell(m, float(s), int(seed)) for m in cfg.methods for s in cfg.strengths for seed in cfg.seeds]


# -- resumable bookkeeping -----------------------------------------------------------------------------
def fingerprint(cfg: StressConfig, manifest_sha256: str) -> str:
    """What makes results comparable across invocations: the data, the biases and the shared run config
    (methods, strengths and seeds may be extended between invocations)."""
    train = config_to_dict(cfg.train)
    train.pop("methods", None)
    # a method block at its defaults says nothing about the runs (and registering a new method adds one)
    specs = method_specs()
    train["method"] = {name: block for name, block in train.get("method", {}).items()
                       if name not in specs or block != specs[name].params().model_dump(mode="json")}
    train["train"].pop("seed", None)
    train["tracking"].pop("run_name", None)
    blob = json.dumps({"manifest": manifest_sha256, "target": cfg.target_class, "train": train,
                       "biases": [b.model_dump(mode="json") for b in cfg.biases]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_results(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=CSV_COLUMNS)
    df = pd.read_csv(path, dtype={"method": str, "run_id": str, "test_set": str, "metric": str})
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} is not a stress-test results file (missing columns {missing}); use another out_dir")
    return df[CSV_COLUMNS]


def done_keys(df: pd.DataFrame) -> set[tuple[str, str, int]]:
    cells = df[["method", "strength", "seed"]].drop_duplicates()
    return {(str(m), f"{float(s):g}", int(seed)) for m, s, seed in cells.itertuples(index=False)}


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
