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


# leading bytes of the formats we read, and of files people put in image columns by mistake
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
          (b"BM", "bmp"), (b"GIF8", "gif"), (b"%PDF", "pdf"), (b"PK\x03\x04", "zip"), (b"\x1f\x8b", "gzip"))
IMAGE_FORMATS = ("png", "jpeg", "tiff", "bmp", "gif", "dicom")


def sniff_format(path: str | Path) -> str:
    """The file's format from its first bytes (not its name): an image format, ``dicom``, ``nifti``,
    ``pdf``/``zip``/``gzip``, ``text``, ``empty`` or ``unknown``."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if is_nifti(p) and (head[:2] == b"\x1f\x8b" or len(head) >= 348):
        return "nifti"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if p.suffix.lower() in DICOM_SUFFIXES:
        return "dicom"  # a DICOM without preamble (raw data set); pydicom decides
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown"


def check_image(path: str | Path) -> tuple[int, int]:
    """Decode the whole image (so that truncated or corrupt files fail here, not mid-training) and return
    (rows, columns). Raises ``ValueError`` naming what the file is when it is not an image at all."""
    arr = decode_image(path)
    return int(arr.shape[0]), int(arr.shape[1])


def decode_image(path: str | Path) -> np.ndarray:
    """:func:`read_image` after checking from its first bytes that the file is an image at all
    (``NotAnImageError`` naming what it is otherwise)."""
    p = Path(path)
    fmt = sniff_format(p)
    if fmt not in IMAGE_FORMATS:
        what = {"empty": "an empty file", "text": "a text file", "pdf": "a PDF document", "zip": "a ZIP archive",
                "gzip": "a gzip archive", "nifti": "a NIfTI volume", "unknown": "of an unknown format"}.get(fmt, fmt)
        raise NotAnImageError(f"not an image file: it is {what} (expected PNG, JPEG, TIFF, BMP or DICOM)")
    return read_image(p)


class NotAnImageError(ValueError):
    pass


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
    return read_image_bits(path)[0]


#: PIL modes whose samples are 8 bits (colour modes are read as 8-bit grey) and 16 bits
_PIL_8BIT = {"1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_PIL_16BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


def _bits_class(bits: int | None) -> int | None:
    """8 or 16 when the source's samples fit 8 or 16 bits, None when unknown or wider."""
    if bits is None or bits <= 0:
        return None
    return 8 if bits <= 8 else 16 if bits <= 16 else None


def read_image_bits(path: str | Path) -> tuple[np.ndarray, int | None]:
    """:func:`read_image` and the bit depth of the source's samples: 8 (8-bit PNG/JPEG/BMP/GIF, DICOM with
    BitsStored <= 8), 16 (16-bit PNG/TIFF, DICOM with BitsStored 9-16) or None when the file does not say
    (32-bit integer or float TIFF). ``data.cache_dtype: auto`` stores the cached image with that depth."""
    p = Path(path)
    if is_dicom(p):
        from isnet.data.dicom import read_dicom

        pixels, info = read_dicom(p)
        return pixels.astype(np.float32, copy=False), _bits_class(int(info.get("bits_stored") or 0))
    with Image.open(p) as img:
        img.load()  # decode now: a truncated file raises here ("image file is truncated")
        mode = img.mode
        arr = _pil_to_gray(img)
    if arr.ndim != 2:
        raise ValueError(f"{p}: expected a single 2-D image, got shape {arr.shape}")
    return arr, 8 if mode in _PIL_8BIT else 16 if mode in _PIL_16BIT else None


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
