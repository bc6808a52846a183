"""Fuzzing the manifest reader: random rows built from valid and invalid cells (image and mask paths, labels,
sites and patient ids in any Unicode, splits, extra columns). Either validation reports every bad row with
its row number (and no good row), or the manifest trains. Never a traceback, never a lost run. Seeded.

Most manifests are checked in process (fast); one bad and one good manifest go through the CLI, the good
one trained to the end."""

from __future__ import annotations

import csv
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import CLASSES, FAST_TRAIN, make_toy_set, run_isnet

from isnet.data.manifest import load_manifest, read_manifest, validate_manifest
from isnet.errors import ManifestError
from isnet.tracking_names import is_valid_key

SEED = 20261123
N_MANIFESTS = 150

# text a hospital might put in a site or patient cell: accents, scripts, symbols MLflow refuses in names,
# quotes, commas and line breaks (the CSV writer quotes them), emoji, right-to-left, zero-width characters
ALPHABET = list("abcXYZ019 _-.()'#+,<>/\\:;\"?*&%$@!=[]{}|~^`") + list("éÔçßøÆ日本語한국어中文עברית𝔘😀\u200b\u200f\t\n")


def _text(rng: random.Random, lo: int = 1, hi: int = 16) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(lo, hi)))


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """Images and masks to draw cells from: distinct 32 px images (some under Unicode names) and every
    kind of bad file."""
    root = tmp_path_factory.mktemp("fuzz")
    make_toy_set(root, n_per_class=30, size=32)
    (root / "Röntgen (Nord) #1").mkdir()
    for i in range(0, 90, 3):  # a third of the images under names with spaces, accents and symbols
        shutil.move(root / f"img{i:03d}.png", root / "Röntgen (Nord) #1" / f"bild {i:03d} – ü,'+.png")
    Image.fromarray(np.full((32, 32), 77, np.uint8)).save(root / "constant.png")
    (root / "text.png").write_text("not an image\n")
    data = (root / "img001.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "a directory.png").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "mask_small.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "mask_empty.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / "mask_full.png")
    return root


def _good_image(root: Path, i: int) -> str:
    return f"Röntgen (Nord) #1/bild {i:03d} – ü,'+.png" if i % 3 == 0 else f"img{i:03d}.png"


BAD_IMAGES = {"missing": "missing_{i}.png", "empty": "", "text": "text.png", "truncated": "truncated.png",
              "directory": "a directory.png", "constant": "constant.png", "no such user": "~nosuchuser_isnet/{i}.png",
              "NUL": "img\x00{i}.png", "unicode": "日本語 {i}.png"}
BAD_MASKS = {"missing": "no_mask_{i}.png", "small": "mask_small.png", "empty": "mask_empty.png",
             "full": "mask_full.png", "text": "text.png"}
BAD_LABELS = ["flu", "COVID", "tb\u200b", "", "normal,covid", "😀"]
BAD_SPLITS = ["training", "x", "vàl", "test\u200b", "1"]


def _manifest(rng: random.Random, root: Path, name: str, bad_rate: float) -> tuple[Path, set[int]]:
    """A random manifest; returns its path and the spreadsheet rows made bad."""
    n = rng.randint(3, 24)
    images = rng.sample(range(90), n)  # good rows never share an image file
    explicit = rng.random() < 0.3
    patients = [_text(rng, 1, 6) for _ in range(rng.randint(1, n))] + [""]
    extra = _text(rng, 1, 8).replace("\n", " ") if rng.random() < 0.3 else None
    rows, bad = [], set()
    for k in range(n):
        r = k + 2
        i = images[k]
        row = {"image": _good_image(root, i), "mask": f"mask{i:03d}.png", "label": CLASSES[i % 3],
               "site": _text(rng) if rng.random() < 0.8 else "", "patient_id": rng.choice(patients),
               "split": rng.choice(["train", "val", "test", " Train ", "TEST"]) if explicit else ""}
        if rng.random() < bad_rate:
            column = rng.choice(["image", "mask", "label", "split"])
            if column == "image":
                row["image"] = rng.choice(list(BAD_IMAGES.values())).format(i=i)
            elif column == "mask":
                row["mask"] = rng.choice(list(BAD_MASKS.values())).format(i=i)
            elif column == "label":
                row["label"] = rng.choice(BAD_LABELS)
            else:
                row["split"] = rng.choice(BAD_SPLITS)
            bad.add(r)
        elif rng.random() < 0.1:
            row["mask"] = ""  # no mask: fine for the standard method
        if rng.random() < 0.1:  # spreadsheet padding that must not matter
            row["label"] = f"  {row['label']} "
        if extra is not None:
            row[extra] = _text(rng, 0, 10)
        rows.append(row)
    path = root / name
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path, bad


ROW = re.compile(r": row (\d+): ")


def test_fuzzed_manifests_report_every_bad_row(pool: Path):
    rng = random.Random(SEED)
    checked = clean = 0
    for m in range(N_MANIFESTS):
        path, bad = _manifest(rng, pool, f"fuzz_{m}.csv", bad_rate=rng.choice([0.0, 0.1, 0.3, 0.6]))
        df = read_manifest(path)  # must never raise on these (a ManifestError would name the whole file)
        problems = validate_manifest(df, path, CLASSES).problems
        reported = {int(x) for p in problems for x in ROW.findall(p)}
        assert bad <= reported, (path.name, sorted(bad - reported), problems)
        # a good row is named only by problems between rows (one patient in two splits, a split lacking a class)
        for p in problems:
            rows_named = {int(x) for x in ROW.findall(p)}
            assert rows_named <= bad, (path.name, p)
            assert p.startswith(f"{path.name}: "), p
        if not problems:
            clean += 1
            try:
                load_manifest(path, CLASSES)
            except ManifestError as exc:  # a clear reason, e.g. too few patients to fill val
                assert "no rows in split" in str(exc), str(exc)
        checked += 1
    assert checked == N_MANIFESTS and clean >= 3


def test_fuzzed_manifests_through_the_cli(pool: Path, tmp_path: Path):
    rng = random.Random(SEED + 1)
    bad_path, bad = _manifest(rng, pool, "cli_bad.csv", bad_rate=0.5)
    while not bad:
        bad_path, bad = _manifest(rng, pool, "cli_bad.csv", bad_rate=0.5)
    v = run_isnet(["manifest", "validate", str(bad_path)], tmp_path)
    assert v.returncode == 1 and "Traceback" not in v.stderr, v.stderr
    for r in bad:
        assert f"cli_bad.csv: row {r}: " in v.stderr, (r, v.stderr)
    t = run_isnet(["train", "--manifest", str(bad_path)] + FAST_TRAIN, tmp_path)
    assert t.returncode == 2 and "Traceback" not in t.stderr and t.stderr.startswith("isnet: error: ")
    assert not (tmp_path / "mlflow").exists()

    # a manifest without bad cells, 30 rows, sites and patient ids in any Unicode: trains to the end
    while True:
        good_path, bad = _manifest(rng, pool, "cli_good.csv", bad_rate=0.0)
        df = read_manifest(good_path)
        if len(df) >= 18 and not validate_manifest(df, good_path, CLASSES).problems:
            try:
                load_manifest(good_path, CLASSES, need_splits=("train", "val", "test"))
                break
            except ManifestError:
                continue
    r = run_isnet(["train", "--manifest", str(good_path), "--epochs", "1"] + FAST_TRAIN, tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("isnet").experiment_id])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert all(is_valid_key(k) for k in run.data.metrics)
    sites = set(df["site"])
    assert {v for k, v in run.data.tags.items() if k.startswith("site.")} == sites


def test_mangled_csv_text_is_read_or_refused_clearly(pool: Path):
    """Random damage to a manifest's text (stray commas, quotes, line breaks, NUL and non-UTF-8 bytes, cut
    lines, repeated lines): reading and validating either works or raises ManifestError, nothing else."""
    rng = random.Random(SEED + 2)
    path, _ = _manifest(rng, pool, "mangle_src.csv", bad_rate=0.2)
    source = path.read_bytes()
    junk = [b",", b'"', b"\n", b"\r", b"\r\n", b"\x00", b"\xff", b"\xc3", b";", b" ", b"\t", b"image", b"label,"]
    outcomes = {"read": 0, "refused": 0}
    for k in range(120):
        data = bytearray(source)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.5:
                data[i:i] = rng.choice(junk)
            elif op < 0.7:
                del data[i:i + rng.randint(1, 20)]
            elif op < 0.85:
                lines = bytes(data).split(b"\n")
                j = rng.randrange(len(lines))
                lines.insert(j, lines[j])
                data = bytearray(b"\n".join(lines))
            else:
                del data[i:]
        mangled = pool / f"mangled_{k}.csv"
        mangled.write_bytes(bytes(data))
        try:
            df = read_manifest(mangled)
            for p in validate_manifest(df, mangled, CLASSES).problems:
                assert p.startswith(f"{mangled.name}: "), p
            outcomes["read"] += 1
        except ManifestError as exc:
            assert str(exc).startswith("manifest ") and mangled.name in str(exc), str(exc)
            outcomes["refused"] += 1
    assert outcomes["read"] and outcomes["refused"], outcomes
