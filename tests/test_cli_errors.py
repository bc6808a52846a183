"""Every user error ends with one clear line naming the file/row/key, a non-zero exit and no traceback."""

from pathlib import Path

import pandas as pd

from conftest import FAST_TRAIN, run_isnet, write_manifest


def _assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("isnet: error: ")
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_missing_manifest(tmp_path: Path):
    proc = run_isnet(["train", "--manifest", "nowhere.csv"] + FAST_TRAIN, tmp_path)
    _assert_user_error(proc, "manifest not found: nowhere.csv")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_image_and_unknown_label(toy_manifest: Path):
    rows = pd.read_csv(toy_manifest, dtype=str, keep_default_na=False).to_dict("records")
    rows[3]["image"] = "gone.png"
    rows[5]["label"] = "sarcoidosis"
    m = write_manifest(toy_manifest.parent / "bad.csv", rows)
    proc = run_isnet(["train", "--manifest", str(m)] + FAST_TRAIN, toy_manifest.parent)
    _assert_user_error(proc, "bad.csv: row 5: image file not found: 'gone.png'",
                       "bad.csv: row 7: unknown label 'sarcoidosis'")
    assert not (toy_manifest.parent / "mlflow").exists(), "no run may be started for an invalid manifest"


def test_bad_config_key(toy_manifest: Path, tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  learning_rate: 0.1\n")
    proc = run_isnet(["train", "--config", str(cfg), "--manifest", str(toy_manifest)], tmp_path)
    _assert_user_error(proc, "unknown key 'optim.learning_rate'", "c.yaml")
    proc = run_isnet(["train", "--manifest", str(toy_manifest), "--set", "optim.epochs=many"], tmp_path)
    _assert_user_error(proc, "'optim.epochs'")


def test_resume_unknown_run(toy_manifest: Path, tmp_path: Path):
    proc = run_isnet(["train", "--manifest", str(toy_manifest), "--resume", "abc123"] + FAST_TRAIN, tmp_path)
    _assert_user_error(proc, "cannot resume run abc123", "no checkpoint")


def test_manifest_validate_command(toy_manifest: Path):
    ok = run_isnet(["manifest", "validate", str(toy_manifest)], toy_manifest.parent)
    assert ok.returncode == 0 and "no problems found" in ok.stdout
    rows = pd.read_csv(toy_manifest, dtype=str, keep_default_na=False).to_dict("records")
    rows[0]["label"] = "flu"
    m = write_manifest(toy_manifest.parent / "bad.csv", rows)
    bad = run_isnet(["manifest", "validate", str(m)], toy_manifest.parent)
    assert bad.returncode == 1 and "row 2: unknown label 'flu'" in bad.stderr


def test_constant_image_is_a_problem_like_an_empty_mask(toy_manifest: Path, tmp_path: Path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(toy_manifest.parent / "grey.png")
    rows = pd.read_csv(toy_manifest, dtype=str, keep_default_na=False).to_dict("records")
    rows[4]["image"] = "grey.png"  # row 6
    m = write_manifest(toy_manifest.parent / "flat.csv", rows)
    v = run_isnet(["manifest", "validate", str(m)], tmp_path)
    assert v.returncode == 1, v.stdout + v.stderr
    assert "flat.csv: row 6: image 'grey.png' is constant (every pixel is 128)" in v.stderr
    proc = run_isnet(["train", "--manifest", str(m)] + FAST_TRAIN, tmp_path)
    _assert_user_error(proc, "flat.csv: row 6: image 'grey.png' is constant")
    assert "divide" not in proc.stderr.replace("would divide by zero", "")  # MONAI's warning never shows
    assert not (tmp_path / "mlflow").exists()


def test_set_override_errors_name_the_override(toy_manifest: Path, tmp_path: Path):
    proc = run_isnet(["train", "--manifest", str(toy_manifest), "--set", "optim.epochs=many"], tmp_path)
    _assert_user_error(proc, "--set optim.epochs=many: 'optim.epochs'")
    assert "(defaults)" not in proc.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: -1\n")
    proc = run_isnet(["train", "--config", str(cfg), "--manifest", str(toy_manifest), "--set", "data.image_size=0"],
                     tmp_path)
    _assert_user_error(proc, "c.yaml", "'optim.lr'", "--set data.image_size=0: 'data.image_size'")
    proc = run_isnet(["segmenter", "train", "--manifest", str(toy_manifest), "--set", "optim.epochs=0"], tmp_path)
    _assert_user_error(proc, "--set optim.epochs=0: 'optim.epochs'")


def test_config_that_is_a_directory_or_not_text(toy_manifest: Path, tmp_path: Path):
    proc = run_isnet(["train", "--config", str(tmp_path), "--manifest", str(toy_manifest)], tmp_path)
    _assert_user_error(proc, f"config file {tmp_path} is a directory")
    assert "not found" not in proc.stderr
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\xff\xfe\x00binary")
    proc = run_isnet(["train", "--config", str(binary), "--manifest", str(toy_manifest)], tmp_path)
    _assert_user_error(proc, f"config file {binary} is not a text file")


def test_duplicate_image_message_names_the_cells_as_written(toy_manifest: Path, tmp_path: Path):
    sub = toy_manifest.parent / "sub"
    sub.mkdir()
    (sub / "img000.png").write_bytes((toy_manifest.parent / "img001.png").read_bytes())  # same name, other folder
    rows = pd.read_csv(toy_manifest, dtype=str, keep_default_na=False).to_dict("records")
    rows[2]["image"] = "./img000.png"  # row 4: the image of row 2, written differently
    rows[3]["image"] = "sub/img000.png"  # row 5: another file with the same base name (no duplicate)
    m = write_manifest(toy_manifest.parent / "dup.csv", rows)
    v = run_isnet(["manifest", "validate", str(m)], tmp_path)
    assert v.returncode == 1
    duplicate = toy_manifest.parent / "img000.png"
    assert f"image 'img000.png', './img000.png' ({duplicate}) is listed in several rows [2, 4]" in v.stderr, v.stderr
    assert "'sub/img000.png' has the same content as the image in row 3" in v.stderr
