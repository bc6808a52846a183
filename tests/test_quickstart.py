"""README command 1, `bash scripts/quickstart.sh`, end to end on a tiny phantom set: it trains the standard model
and ISNet and prints their comparison. Run in a copy of the scripts and pipelines (with the test's virtual
environment linked in as .venv), so that its data, MLflow store and checkpoints stay out of the repository."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _copy_with_this_venv(dest: Path) -> Path:
    """scripts/, pipelines/ and pyproject.toml in ``dest``, .venv a link to the running environment; skips
    when that environment was not installed by scripts/ensure_venv.sh (the script would install into it)."""
    venv = Path(sys.prefix)
    # the stamp scripts/ensure_venv.sh writes: the hash of pyproject.toml followed by the script itself
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes()
                          + (REPO / "scripts" / "ensure_venv.sh").read_bytes()).hexdigest()[:16]
    stamp = venv / ".isnet-installed"
    if not stamp.is_file() or stamp.read_text().strip() != want:
        pytest.skip(f"{venv} is not an environment installed by scripts/ensure_venv.sh for this pyproject.toml")
    for folder in ("scripts", "pipelines"):
        shutil.copytree(REPO / folder, dest / folder)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    (dest / ".venv").symlink_to(venv, target_is_directory=True)
    return dest



def test_quickstart_trains_both_models_and_compares_them(tmp_path):
    repo = _copy_with_this_venv(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if k not in ("ISNET_VENV", "MLFLOW_TRACKING_URI")}
    env.update({"QUICKSTART_PER_CLASS": "4", "QUICKSTART_SIZE": "32", "QUICKSTART_STD_EPOCHS": "2",
                "QUICKSTART_ISNET_EPOCHS": "2", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.run(["bash", str(repo / "scripts" / "quickstart.sh"), "--set", "train.threads=1",
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "installing isnet" not in out + proc.stderr  # the existing environment was used as it is
    std_run = (repo / "runs/quickstart/standard.run_id").read_text().strip()
    isnet_run = (repo / "runs/quickstart/isnet.run_id").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{32}", std_run) and re.fullmatch(r"[0-9a-f]{32}", isnet_run)
    table = out[out.index("== standard vs ISNet"):].splitlines()
    assert table[1].split()[:3] == ["label", "run", "method(s)"]
    assert table[2].split()[:4] == ["standard", std_run, "standard", "small_cnn"]
    assert table[3].split()[:4] == ["ISNet", isnet_run, "isnet", "small_cnn"]
    figure = re.search(r"heatmap figure \(test images\): (\S+)", out).group(1)
    assert (repo / figure).read_bytes()[:8] == PNG_MAGIC
    assert f"MLflow runs: standard {std_run}, ISNet {isnet_run}" in out
    rows = json.loads((repo / "runs/quickstart/compare.json").read_text())
    assert [(r["backbone"], r["image_size"], r["epochs"]) for r in rows] == [("small_cnn", 32, 2)] * 2
    record = json.loads((repo / "runs/quickstart/quickstart.json").read_text())  # the result file it leaves
    assert record["quickstart"]["rows"] == rows and record["quickstart"]["seconds"] >= 0
    assert record["quickstart"]["settings"]["isnet_epochs"] == 2 and record["command"].startswith("bash scripts/")
    assert {"cpu", "commit", "date"} <= set(record["machine"])
    assert (tmp_path / "mlflow.db").is_file() and (repo / "data/phantom/manifest.csv").is_file()
    assert not (repo / "mlflow").exists()  # the store given by MLFLOW_TRACKING_URI, not the default one
