"""DICOM I/O: rescale, VOI/window, MONOCHROME1 inversion, tags, determinism, multi-frame refusal, no PHI."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from isnet.data.dicom import read_dicom, write_dicom


def _ramp(bits: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2 ** bits, size=(80, 96)).astype(np.uint16)
    a[0, 0], a[0, 1] = 0, 2 ** bits - 1
    return a


def test_monochrome2_16bit_exact_after_rescale(tmp_path):
    px = _ramp(16)
    p = write_dicom(tmp_path / "a.dcm", px, photometric="MONOCHROME2", bits_stored=16, rescale_slope=0.25,
                    rescale_intercept=-1024.0, window=(7168.0, 16384.0), patient_id="PH0001")
    arr, info = read_dicom(p, voi=False)
    assert arr.dtype == np.float32 and arr.shape == (80, 96)
    np.testing.assert_array_equal(arr, px.astype(np.float64) * 0.25 - 1024.0)
    assert len(np.unique(arr)) > 4096, "no 8/12-bit quantisation"
    assert info["voi_applied"] is False and info["inverted"] is False


def test_monochrome1_inverted_back(tmp_path):
    q = _ramp(12)  # attenuation-like values (higher = denser)
    stored = (4095 - q).astype(np.uint16)
    p1 = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", bits_stored=12, patient_id="PH1")
    p2 = write_dicom(tmp_path / "m2.dcm", q, photometric="MONOCHROME2", bits_stored=12, patient_id="PH2")
    a1, i1 = read_dicom(p1)
    a2, _ = read_dicom(p2)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(a1, q.astype(np.float32))
    assert i1["inverted"] is True and i1["photometric"] == "MONOCHROME1"


def test_window_is_applied(tmp_path):
    px = np.array([[0, 1000, 2000, 3000, 4095]], np.uint16)
    p = write_dicom(tmp_path / "w.dcm", px, bits_stored=12, window=(2000.0, 1000.0), patient_id="PHW")
    arr, info = read_dicom(p)
    assert info["voi_applied"] and info["window"] == (2000.0, 1000.0)
    assert arr[0, 0] == 0 and arr[0, 1] == 0 and arr[0, 4] == 4095 and arr[0, 3] == 4095
    assert 0 < arr[0, 2] < 4095
    raw, _ = read_dicom(p, voi=False)
    np.testing.assert_array_equal(raw, px.astype(np.float32))


def test_tags_uids_and_no_phi(tmp_path):
    px = _ramp(12)
    kw = dict(photometric="MONOCHROME1", bits_stored=12, rescale_slope=1.0, rescale_intercept=0.0,
              window=(2047.5, 4096.0), patient_id="PH77AA", patient_name="DOE^JANE", sex="F", age=44)
    p = write_dicom(tmp_path / "t.dcm", px, **kw)
    ds = pydicom.dcmread(p)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert (ds.Rows, ds.Columns) == (80, 96)
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    assert float(ds.WindowCenter) == 2047.5 and float(ds.WindowWidth) == 4096.0
    assert ds.PatientID == "PH77AA" and str(ds.PatientName) == "DOE^JANE"
    uids = {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
    assert len(uids) == 3 and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # deterministic bytes for the same call, different UIDs for another patient
    q = write_dicom(tmp_path / "t2.dcm", px, **kw)
    assert p.read_bytes() == q.read_bytes()
    other = pydicom.dcmread(write_dicom(tmp_path / "t3.dcm", px, **{**kw, "patient_id": "PH88BB"}))
    assert other.SOPInstanceUID != ds.SOPInstanceUID
    _, info = read_dicom(p)
    text = repr(info)
    assert "DOE" not in text and "PH77AA" not in text and "044Y" not in text


def test_multiframe_refused(tmp_path):
    p = write_dicom(tmp_path / "mf.dcm", _ramp(12), bits_stored=12, patient_id="PHMF")
    ds = pydicom.dcmread(p)
    ds.NumberOfFrames = 2
    ds.Rows = 40
    ds.save_as(p)
    with pytest.raises(ValueError, match="mf.dcm.*multi-frame"):
        read_dicom(p)


def test_bad_write_arguments(tmp_path):
    with pytest.raises(ValueError, match="outside 0..4095"):
        write_dicom(tmp_path / "x.dcm", np.full((4, 4), 5000, np.uint16), bits_stored=12)
    with pytest.raises(ValueError, match="photometric"):
        write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint16), photometric="RGB")
    with pytest.raises(ValueError, match="2-D"):
        write_dicom(tmp_path / "x.dcm", np.zeros((2, 4, 4), np.uint16))
