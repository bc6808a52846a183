"""DICOM read/write for chest radiographs, without PHI leaving the file.

``read_dicom`` returns float32 pixels on one consistent scale (higher = more attenuating, as MONOCHROME2),
after the modality LUT (rescale slope/intercept), the VOI LUT or window when present and asked for, and
MONOCHROME1 inversion, keeping the full 12-16-bit precision. The info dict carries acquisition fields only,
never patient or institution tags. ``write_dicom`` stores a single-frame Digital X-Ray image with
deterministic UIDs (derived from the caller's key), as the phantom generator needs byte-identical output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
# acquisition tags that are safe to report; everything else (names, IDs, dates, institutions) stays behind
SAFE_TAGS = ("Modality", "ViewPosition", "BodyPartExamined", "Manufacturer", "PixelSpacing", "ImagerPixelSpacing",
             "KVP", "SOPClassUID")


def write_dicom(path: str | Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 16,
                rescale_slope: float = 1.0, rescale_intercept: float = 0.0,
                window: tuple[float, float] | None = None, patient_id: str = "ANON",
                patient_name: str = "PHANTOM^ANON", uid_key: str | None = None,
                pixel_spacing: float | None = None, view: str = "PA", sex: str = "", age: int | None = None,
                manufacturer: str = "isnet phantom") -> Path:
    """Write a single-frame DX image. ``pixels`` are the *stored* values (already inverted for MONOCHROME1).

    ``window`` is (center, width) in rescaled units. UIDs come from ``uid_key`` (default: patient_id), so the
    same call always writes the same bytes.
    """
    path = Path(path)
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D single-frame image, got shape {arr.shape}")
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"{path}: photometric must be one of {PHOTOMETRICS}, got {photometric!r}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"{path}: bits_stored must be in 8..16, got {bits_stored}")
    if arr.size and (arr.min() < 0 or int(arr.max()) >= 2 ** bits_stored):
        raise ValueError(f"{path}: pixel values outside 0..{2 ** bits_stored - 1} for bits_stored={bits_stored}")
    arr = arr.astype(np.uint16)
    key = uid_key or patient_id
    sop = generate_uid(entropy_srcs=[key, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["isnet", "implementation"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[key, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "series"])
    ds.Modality = "DX"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientSex = sex
    if age is not None:
        ds.PatientAge = f"{int(age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.Manufacturer = manufacturer
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{rescale_slope:.10g}"
    ds.RescaleIntercept = f"{rescale_intercept:.10g}"
    ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = f"{window[0]:.10g}"
        ds.WindowWidth = f"{window[1]:.10g}"
    if pixel_spacing:
        ds.PixelSpacing = [f"{pixel_spacing:.6g}", f"{pixel_spacing:.6g}"]
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class DicomError(ValueError):
    """A DICOM file we cannot turn into a radiograph; the message names the file and what to do, never PHI."""


# pip packages that add decoders to pydicom, by transfer syntax family (installed with isnet: pylibjpeg*)
DECODER_PACKAGES = {
    "JPEG Baseline": "pylibjpeg pylibjpeg-libjpeg (or pillow)",
    "JPEG Extended": "pylibjpeg pylibjpeg-libjpeg",
    "JPEG Lossless": "pylibjpeg pylibjpeg-libjpeg",
    "JPEG-LS": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",
    "JPEG 2000": "pylibjpeg pylibjpeg-openjpeg (or pillow)",
    "High-Throughput JPEG 2000": "pylibjpeg pylibjpeg-openjpeg>=2.4",
    "RLE": "none needed (pydicom decodes RLE itself)",
}


def transfer_syntax(ds: Dataset) -> pydicom.uid.UID | None:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return pydicom.uid.UID(str(uid)) if uid else None


def _decoder_hint(uid: pydicom.uid.UID) -> str:
    name = uid.name
    for family, pkgs in DECODER_PACKAGES.items():
        if name.startswith(family):
            return f"pip install {pkgs}" if not pkgs.startswith("none") else pkgs
    return "no pip decoder is known for it; convert the file to uncompressed DICOM or 16-bit PNG"


def _pixels(ds: Dataset, path: Path) -> np.ndarray:
    """Decode the pixel data, turning pydicom's many failure modes into one clear ``DicomError``."""
    if "PixelData" not in ds:
        raise DicomError(f"{path}: DICOM file has no pixel data (a report or structured document?)")
    uid = transfer_syntax(ds)
    if uid is not None and uid.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(uid).is_available
        except (NotImplementedError, ValueError, KeyError):
            available = False
        if not available:
            raise DicomError(f"{path}: compressed transfer syntax {uid.name!r} ({uid}) cannot be decoded here; "
                             f"{_decoder_hint(uid)}")
    try:
        return ds.pixel_array
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        what = f"compressed ({uid.name}) " if uid is not None and uid.is_compressed else ""
        raise DicomError(f"{path}: {what}DICOM pixel data is corrupt or truncated ({text})") from None


def read_dicom(path: str | Path, *, voi: bool = True) -> tuple[np.ndarray, dict]:
    """Pixels as float32 (higher = more attenuating) and a PHI-free info dict.

    Applies the modality LUT (rescale), then with ``voi`` the VOI LUT or window if the file has one, then
    inverts MONOCHROME1 within the output range so both photometric interpretations read the same way.
    Compressed transfer syntaxes are decoded when a decoder is installed (pylibjpeg, pillow, pydicom's own
    RLE); otherwise, and for corrupt, truncated or multi-frame files, a ``DicomError`` says what to do.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        raise DicomError(f"{path}: not a DICOM file (no DICM preamble and no readable data set)") from None
    except Exception as exc:
        raise DicomError(f"{path}: DICOM header is corrupt or truncated ({type(exc).__name__})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; "
                         "export one frame per file")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in PHOTOMETRICS:
        raise DicomError(f"{path}: PhotometricInterpretation {photometric!r} is not a grey-scale radiograph")
    raw = _pixels(ds, path)
    if raw.ndim != 2:
        raise DicomError(f"{path}: expected a 2-D single-frame image, got shape {raw.shape}")
    bits = int(ds.get("BitsStored", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo_raw, hi_raw = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    arr = apply_modality_lut(raw, ds).astype(np.float64)
    lo, hi = sorted((lo_raw * slope + intercept, hi_raw * slope + intercept))
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    voi_applied = bool(voi and has_voi)
    if voi_applied:
        arr = apply_voi_lut(arr, ds, prefer_lut=True).astype(np.float64)
        if "VOILUTSequence" in ds:  # prefer_lut: the output range is the LUT's own bit depth
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    inverted = photometric == "MONOCHROME1"
    if inverted:
        arr = (hi + lo) - arr
    info = {
        "path": str(path), "rows": int(ds.Rows), "columns": int(ds.Columns), "photometric": photometric,
        "bits_stored": bits, "bits_allocated": int(ds.get("BitsAllocated", 16)), "signed": signed,
        "rescale_slope": slope, "rescale_intercept": intercept, "voi_applied": voi_applied,
        "inverted": inverted, "value_range": (lo, hi),
        "window": (float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth)))
        if "WindowCenter" in ds and "WindowWidth" in ds else None,
    }
    for tag in SAFE_TAGS:
        if tag in ds:
            v = ds.get(tag)
            info[tag] = [float(x) for x in v] if tag.endswith("Spacing") else str(v)
    return arr.astype(np.float32), info


def _first(v):
    return v[0] if isinstance(v, pydicom.multival.MultiValue) else v
