"""Robust ingestion: every validation error through the CLI, compressed/8-bit/signed DICOM, and no PHI in
anything a training run writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless, UID

from isnet.data import io
from isnet.data.dicom import DicomError, read_dicom, write_dicom
from isnet.data.manifest import load_manifest
from isnet.data.phantom import generate_dataset, render_case
from isnet.errors import ManifestError

from conftest import CLASSES, FAST_TRAIN, run_isnet, write_manifest

SIZE = 48


def _phantom_pixels(seed: int, bits: int = 12) -> tuple[np.ndarray, np.ndarray]:
    c = render_case(seed, label="normal", site=1, size=SIZE)
    return np.round(c.image * (2 ** bits - 1)).astype(np.uint16), c.mask


def _good_set(folder: Path, n: int = 6) -> list[dict]:
    """n PNG + n DICOM images with masks, explicit splits with every class in every split."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(2 * n):
        px, mask = _phantom_pixels(i)
        name = f"img{i:02d}.dcm" if i % 2 else f"img{i:02d}.png"
        if i % 2:
            write_dicom(folder / name, px, bits_stored=12, patient_id=f"P{i}", patient_name="SECRET^NAME")
        else:
            Image.fromarray(px).save(folder / name)
        Image.fromarray(mask * 255).save(folder / f"mask{i:02d}.png")
        rows.append({"image": name, "mask": f"mask{i:02d}.png", "label": CLASSES[i % 3], "site": f"s{i % 2}",
                     "patient_id": f"p{i}", "split": ["train", "val"][(i // 3) % 2]})
    return rows


def test_clean_manifest_summary_and_exit_zero(tmp_path: Path):
    m = write_manifest(tmp_path / "good.csv", _good_set(tmp_path))
    r = run_isnet(["manifest", "validate", str(m)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "12 images, 12 patient ids, 12 with a lung mask" in out
    assert "per site and class" in out and "per split and class" in out and "no problems found" in out
    site_table = out.split("per site and class:")[1].split("per split and class:")[0]
    lines = {ln.split()[0]: ln.split()[1:] for ln in site_table.strip().splitlines()[1:]}
    header = site_table.strip().splitlines()[0].split()
    assert header == ["covid", "normal", "tb", "total"]
    assert lines["s0"] == ["2", "2", "2", "6"] and lines["total"] == ["4", "4", "4", "12"]


def test_every_ingestion_error_reported_with_rows(tmp_path: Path):
    rows = _good_set(tmp_path)
    # row 2: a text file in the image column
    (tmp_path / "notes.png").write_text("patient history: ...\n")
    rows[0]["image"] = "notes.png"
    # row 3: a truncated DICOM (pixel data cut short) whose header carries a patient name
    data = (tmp_path / rows[1]["image"]).read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 1500])
    rows[1]["image"] = "trunc.dcm"
    # row 4: a corrupt DICOM header (garbage after the preamble)
    (tmp_path / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    rows[2]["image"] = "garbage.dcm"
    # row 5: a multi-frame DICOM
    ds = pydicom.dcmread(tmp_path / rows[3]["image"])
    ds.NumberOfFrames, ds.Rows = 2, SIZE // 2
    ds.save_as(tmp_path / "multi.dcm")
    rows[3]["image"] = "multi.dcm"
    # row 6: a compressed transfer syntax no decoder exists for (MPEG-2)
    ds = pydicom.dcmread(tmp_path / rows[5]["image"])
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "mpeg.dcm")
    rows[4]["image"] = "mpeg.dcm"
    # row 7: an empty file; row 8: a PDF
    (tmp_path / "empty.png").write_bytes(b"")
    rows[5]["image"] = "empty.png"
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4\n...")
    rows[6]["image"] = "scan.pdf"
    # rows 9-13 all in train/val: drop every 'tb' from val → one class missing from a split
    for r in rows:
        if r["split"] == "val" and r["label"] == "tb":
            r["label"] = "covid"
    m = write_manifest(tmp_path / "bad.csv", rows)
    r = run_isnet(["manifest", "validate", str(m)], cwd=tmp_path)
    assert r.returncode == 1
    err = r.stderr
    assert "bad.csv: row 2: image 'notes.png' is not an image file: it is a text file" in err
    assert "bad.csv: row 3: DICOM image 'trunc.dcm' cannot be used:" in err and "corrupt or truncated" in err
    assert "bad.csv: row 4: DICOM image 'garbage.dcm' cannot be used:" in err
    assert "bad.csv: row 5: DICOM image 'multi.dcm' cannot be used: multi-frame DICOM (2 frames)" in err
    assert "bad.csv: row 6: DICOM image 'mpeg.dcm' cannot be used: compressed transfer syntax" in err
    assert "MPEG2" in err and "convert the file" in err
    assert "bad.csv: row 7: image 'empty.png' is not an image file: it is an empty file" in err
    assert "bad.csv: row 8: image 'scan.pdf' is not an image file: it is a PDF document" in err
    assert "bad.csv: split 'val' has no image of class(es) ['tb']" in err
    assert "SECRET" not in err + r.stdout  # PHI never reaches messages
    assert "per site and class" in r.stdout  # the summary still comes
    # the same problems through the public API, raised at once before any training
    with pytest.raises(ManifestError) as exc:
        load_manifest(m, CLASSES)
    assert str(exc.value).count("bad.csv: ") == 8
    with pytest.raises(DicomError, match=r"mpeg.dcm: compressed transfer syntax 'MPEG2.*cannot be decoded here"):
        read_dicom(tmp_path / "mpeg.dcm")


def test_split_class_check_only_for_explicit_splits(tmp_path: Path):
    rows = _good_set(tmp_path)
    for r in rows:
        if r["split"] == "val" and r["label"] == "tb":
            r["label"] = "covid"
    rows[0]["split"] = ""  # the seeded assignment still has to run: no explicit-split check
    m = write_manifest(tmp_path / "m.csv", rows)
    assert load_manifest(m, CLASSES).frame["split"].ne("").all()


def _compress_roundtrip(tmp_path: Path, syntax) -> None:
    px, _ = _phantom_pixels(3)
    p = write_dicom(tmp_path / "plain.dcm", px, photometric="MONOCHROME1", bits_stored=12, rescale_slope=2.0,
                    rescale_intercept=-100.0, patient_id="PC")
    ref, _ = read_dicom(p)
    ds = pydicom.dcmread(p)
    ds.compress(syntax)
    ds.save_as(tmp_path / "comp.dcm")
    assert pydicom.dcmread(tmp_path / "comp.dcm").file_meta.TransferSyntaxUID == syntax
    arr, info = read_dicom(tmp_path / "comp.dcm")
    np.testing.assert_array_equal(arr, ref)
    assert info["inverted"] and info["rescale_slope"] == 2.0


def test_rle_lossless_decoded(tmp_path: Path):
    _compress_roundtrip(tmp_path, RLELossless)


def test_jpeg2000_lossless_decoded(tmp_path: Path):
    pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg (a dependency of isnet) is not installed")
    _compress_roundtrip(tmp_path, JPEG2000Lossless)


def test_jpeg_baseline_decoded(tmp_path: Path):
    """An 8-bit JPEG-compressed DICOM (as some PACS exports are): decoded, close to the original pixels."""
    import io as _io

    px, _ = _phantom_pixels(4, bits=8)
    p = write_dicom(tmp_path / "plain.dcm", px, bits_stored=8, patient_id="PJ")
    ds = pydicom.dcmread(p)
    buf = _io.BytesIO()
    Image.fromarray(px.astype(np.uint8)).save(buf, format="JPEG", quality=95)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    ds.save_as(tmp_path / "jpeg.dcm")
    arr, info = read_dicom(tmp_path / "jpeg.dcm")
    assert arr.shape == px.shape and info["bits_stored"] == 8
    assert np.abs(arr - px.astype(np.float32)).mean() < 3


def test_8bit_and_signed_16bit(tmp_path: Path):
    px, _ = _phantom_pixels(5, bits=8)
    p = write_dicom(tmp_path / "a.dcm", px, bits_stored=8, patient_id="P8")
    ds = pydicom.dcmread(p)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = px.astype(np.uint8).tobytes()
    ds.save_as(tmp_path / "b8.dcm")
    arr, info = read_dicom(tmp_path / "b8.dcm")
    np.testing.assert_array_equal(arr, px.astype(np.float32))
    assert (info["bits_allocated"], info["bits_stored"]) == (8, 8)
    # signed 16-bit with a rescale (CT-like numbers): values below zero survive
    signed = (px.astype(np.int16) * 8 - 1000)
    ds = pydicom.dcmread(p)
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-24"
    ds.PixelData = signed.astype(np.int16).tobytes()
    ds.save_as(tmp_path / "s16.dcm")
    arr, info = read_dicom(tmp_path / "s16.dcm", voi=False)
    np.testing.assert_array_equal(arr, signed.astype(np.float32) - 24)
    assert info["signed"] and arr.min() < 0


def test_sniff_format(tmp_path: Path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.jpg.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "b.png", format="JPEG")
    (tmp_path / "c.csv").write_text("a,b\n")
    assert io.sniff_format(tmp_path / "a.jpg.png") == "png"
    assert io.sniff_format(tmp_path / "b.png") == "jpeg"  # content, not name
    assert io.sniff_format(tmp_path / "c.csv") == "text"
    assert io.check_image(tmp_path / "b.png") == (4, 4)


PHI = {"PatientName": "ZZTOPSECRET^HOMER", "PatientBirthDate": "19010203", "InstitutionName": "ZZHOSPITAL GENERAL",
       "ReferringPhysicianName": "ZZDOCTOR^WHO", "OtherPatientIDs": "ZZOTHERID77", "PatientAddress": "ZZ 1 Elm Street",
       "AccessionNumber": "ZZACC123456"}


def _stamp_phi(folder: Path) -> int:
    n = 0
    for p in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(p)
        for k, v in PHI.items():
            setattr(ds, k, v)
        ds.save_as(p)
        n += 1
    return n


def _grep(root: Path, needles: list[str]) -> list[str]:
    """Every file under root whose bytes contain a needle (SQLite pages, pickles, YAML, logs alike)."""
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p}: {s}" for s in needles if s.encode() in data]
    return hits


def test_no_phi_in_training_artifacts(tmp_path: Path):
    """One tiny training run on DICOM phantoms whose headers carry a fake patient name, birth date, institution,
    physician, address and accession number: none of them appears in the MLflow store, checkpoints or output."""
    data = tmp_path / "data"
    generate_dataset(data, sites=4, per_class=3, seed=5, size=48)
    df = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    df = df[df["image"].str.endswith(".dcm")]  # the DICOM sites only
    df.to_csv(data / "dicom.csv", index=False)
    assert _stamp_phi(data) == len(df) >= 12
    assert str(pydicom.dcmread(data / df["image"].iloc[0]).PatientName) == PHI["PatientName"]
    work = tmp_path / "work"
    work.mkdir()
    r = run_isnet(["train", "--manifest", str(data / "dicom.csv"), *FAST_TRAIN, "--epochs", "1",
                   "--set", "tracking.log_model=true"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (work / "mlflow").is_dir() and (work / "checkpoints").is_dir()
    needles = list(PHI.values()) + ["ZZTOPSECRET", "HOMER", "1901"]
    assert _grep(work, needles) == []
    assert not [s for s in needles if s in r.stdout + r.stderr]
    # and the run did read the DICOMs: its logged split table lists them
    logged = list((work / "mlflow").rglob("splits.csv"))
    assert logged and ".dcm" in logged[0].read_text()
