"""Reading chest X-ray images and lung masks from disk into numpy arrays.

Images keep their bit depth (8 or 16 bit PNG, 12–16 bit DICOM) as float32 until intensity normalisation,
so no contrast is lost before the percentile scaling. DICOM goes through ``isnet.data.dicom`` (rescale,
VOI/window, MONOCHROME1 inversion); masks may be PNG (0/1 or 0/255, palette or RGB) or NIfTI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
Image.MAX_IMAGE_PIXELS = 20000 * 20000  # large radiographs are legitimate; refuse only absurd sizes


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix == "":
        try:
            with open(path, "rb") as f:
                f.seek(128)
                return f.read(4) == b"DICM"
        except OSError:
            return False
    return False


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(img, dtype=np.float32)
    if img.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32)


def read_image(path: str | Path) -> np.ndarray:
    """A 2-D float32 array (H, W), larger values = more attenuation (as displayed in MONOCHROME2)."""
    p = Path(path)
    if is_dicom(p):
        from isnet.data.dicom import read_dicom

        pixels, _ = read_dicom(p)
        return pixels.astype(np.float32, copy=False)
    with Image.open(p) as img:
        arr = _pil_to_gray(img)
    if arr.ndim != 2:
        raise ValueError(f"{p}: expected a single 2-D image, got shape {arr.shape}")
    return arr


def read_mask(path: str | Path) -> np.ndarray:
    """A 2-D uint8 array of 0/1. Any encoding (0/1, 0/255, palette) is binarised at half its maximum."""
    p = Path(path)
    if is_nifti(p):
        import nibabel as nib

        arr = np.asarray(nib.load(str(p)).dataobj, dtype=np.float32)
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise ValueError(f"{p}: NIfTI mask must be 2-D, got shape {arr.shape}")
        arr = arr.T  # NIfTI stores (x, y); images are (row, column)
    else:
        arr = read_image(p)
    top = float(arr.max()) if arr.size else 0.0
    if top <= 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    return (arr > top / 2).astype(np.uint8)


def image_shape(path: str | Path) -> tuple[int, int]:
    """(rows, columns) from the file header, without decoding pixels."""
    p = Path(path)
    if is_dicom(p):
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    if is_nifti(p):
        import nibabel as nib

        shape = [s for s in nib.load(str(p)).shape if s != 1]
        if len(shape) != 2:
            raise ValueError(f"NIfTI file is not 2-D (shape {shape})")
        return int(shape[1]), int(shape[0])
    with Image.open(p) as img:
        w, h = img.size
    return h, w
