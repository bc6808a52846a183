"""Write a phantom data set: images (PNG/DICOM per site style), lung masks and ``manifest.csv``.

Every case is seeded from ``SeedSequence([seed, site, class, index])``, so the output is byte-identical for
a seed whatever the number of workers, and any single case can be re-rendered alone.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from ..dicom import write_dicom
from .lesions import LABELS
from .render import DEFAULT_LESION_CONTRAST, PhantomCase, render_case
from .sites import SiteStyle, site_styles

MANIFEST_COLUMNS = ("image", "mask", "label", "site", "patient_id", "split", "view", "sex", "age")
FAKE_NAMES = ("DOE^JANE", "ROE^RICHARD", "SMITH^ALEX", "MUSTERMANN^ERIKA", "ROSSI^MARIO", "DUPONT^CLAIRE")


@dataclass(frozen=True)
class PhantomSpec:
    """Parameters of a phantom data set; ``validate`` says precisely what is wrong."""

    sites: int = 3
    per_class: int = 200
    seed: int = 0
    size: int = 256
    lesion_contrast: float = DEFAULT_LESION_CONTRAST
    class_marker_rate: float = 0.0
    workers: int = 1

    def validate(self) -> None:
        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        for name in ("sites", "per_class", "seed", "size", "workers"):
            if not is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.sites < 1:
            raise ValueError(f"sites must be >= 1, got {self.sites}")
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1 (images per class per site), got {self.per_class}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.size < 32:
            raise ValueError(f"size must be >= 32 pixels, got {self.size}")
        if self.size > 4096:
            raise ValueError(f"size must be <= 4096 pixels, got {self.size}")
        if not (isinstance(self.lesion_contrast, (int, float)) and 0 <= self.lesion_contrast <= 20):
            raise ValueError(f"lesion_contrast must be a number in [0, 20], got {self.lesion_contrast!r}")
        if not (isinstance(self.class_marker_rate, (int, float)) and 0 <= self.class_marker_rate <= 1):
            raise ValueError(f"class_marker_rate must be in [0, 1], got {self.class_marker_rate!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


def patient_id(seed: int, site: int, label: int, index: int) -> str:
    """Pseudonymous, unique per image, and carrying no hint of the class or site."""
    h = hashlib.sha256(f"isnet-phantom:{seed}:{site}:{label}:{index}".encode()).hexdigest()
    return f"PH{h[:12].upper()}"


def quantize(case: PhantomCase, style: SiteStyle) -> np.ndarray:
    """Stored integer pixels for the site's bit depth; MONOCHROME1 sites store inverted values."""
    bits = style.bits
    top = 2 ** bits - 1
    q = np.round(case.image * top).astype(np.uint16 if bits > 8 else np.uint8)
    if style.photometric == "MONOCHROME1":
        q = (top - q).astype(q.dtype)
    return q


def write_case(case: PhantomCase, style: SiteStyle, out_dir: Path, pid: str, size: int) -> tuple[str, str]:
    """Write image and mask; returns their paths relative to ``out_dir``."""
    img_rel = f"{style.name}/images/{pid}.{'dcm' if style.fmt == 'dicom' else 'png'}"
    mask_rel = f"{style.name}/masks/{pid}.png"
    q = quantize(case, style)
    (out_dir / img_rel).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / mask_rel).parent.mkdir(parents=True, exist_ok=True)
    if style.fmt == "dicom":
        slope, intercept = (1.0, 0.0) if style.bits == 12 else (0.25, -1024.0)
        top = 2 ** style.bits - 1
        center = intercept + slope * top / 2
        name = FAKE_NAMES[int(pid[2:6], 16) % len(FAKE_NAMES)]
        write_dicom(out_dir / img_rel, q, photometric=style.photometric, bits_stored=style.bits,
                    rescale_slope=slope, rescale_intercept=intercept, window=(center, slope * (top + 1)),
                    patient_id=pid, patient_name=name, uid_key=f"{pid}:{style.name}",
                    pixel_spacing=round(style.fov * 10 / size, 4), view="PA", sex=case.meta["sex"],
                    age=case.meta["age"])
    else:
        im = Image.fromarray(q.astype(np.uint16) if style.bits == 16 else q)  # uint16 -> I;16, uint8 -> L
        im.save(out_dir / img_rel, compress_level=1)
    Image.fromarray(case.mask * np.uint8(255)).save(out_dir / mask_rel, compress_level=1)
    return img_rel, mask_rel


def _job(args: tuple) -> dict:
    spec, style, si, li, i, out_dir = args
    ss = np.random.SeedSequence([spec.seed, si, li, i])
    case = render_case(ss, label=LABELS[li], site=style, size=spec.size, lesion_contrast=spec.lesion_contrast,
                       class_marker_rate=spec.class_marker_rate)
    pid = patient_id(spec.seed, si, li, i)
    img_rel, mask_rel = write_case(case, style, Path(out_dir), pid, spec.size)
    return dict(image=img_rel, mask=mask_rel, label=LABELS[li], site=style.name, patient_id=pid, split="",
                view="PA", sex=case.meta["sex"], age=case.meta["age"])


def generate_dataset(out_dir: str | Path, *, sites: int = 3, per_class: int = 200, seed: int = 0, size: int = 256,
                     lesion_contrast: float = DEFAULT_LESION_CONTRAST, class_marker_rate: float = 0.0,
                     workers: int = 1, progress: bool = False) -> Path:
    """Render sites x 3 classes x per_class cases into ``out_dir``; returns ``out_dir/manifest.csv``."""
    spec = PhantomSpec(sites=sites, per_class=per_class, seed=seed, size=size, lesion_contrast=lesion_contrast,
                       class_marker_rate=class_marker_rate, workers=workers)
    spec.validate()
    out = Path(out_dir)
    styles = site_styles(sites, seed)
    for st in styles:
        (out / st.name / "images").mkdir(parents=True, exist_ok=True)
        (out / st.name / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(spec, st, si, li, i, str(out)) for si, st in enumerate(styles) for li in range(len(LABELS))
            for i in range(per_class)]
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(jobs), desc="phantom", unit="img")
        except ImportError:  # progress is a nicety
            bar = None
    rows: list[dict] = []
    if workers == 1:
        for j in jobs:
            rows.append(_job(j))
            if bar is not None:
                bar.update(1)
    else:
        with get_context("fork" if hasattr(__import__("os"), "fork") else "spawn").Pool(workers) as pool:
            for r in pool.imap(_job, jobs, chunksize=8):
                rows.append(r)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return manifest
