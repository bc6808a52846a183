"""Write a phantom data set: images (PNG/DICOM per site style), lung masks and ``manifest.csv``.

Every case is seeded from ``SeedSequence([seed, site, class, index])``, so the output is byte-identical for
a seed whatever the number of workers, and any single case can be re-rendered alone. The scenario
(``scenarios.py``) decides the sites, their class mix, markers and splits.
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
from .artefacts import SHAPES
from .lesions import LABELS
from .render import DEFAULT_LESION_CONTRAST, PhantomCase, render_case
from .scenarios import RANDOM, SCENARIOS, Severity, class_counts, confounded_plan
from .sites import SiteStyle, site_styles

MANIFEST_COLUMNS = ("image", "mask", "label", "site", "patient_id", "split", "view", "sex", "age")
#: the confounded scenario adds ``marker``: the marker shape drawn on the image ("" for none)
CONFOUNDED_COLUMNS = MANIFEST_COLUMNS + ("marker",)
#: the confounded scenario also writes these two subsets of manifest.csv beside it
INTERNAL_MANIFEST, EXTERNAL_MANIFEST = "manifest_internal.csv", "manifest_external.csv"
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
    scenario: str = "default"
    severity: Severity = Severity()  # confounded scenario: how strongly its site markers give the class away

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
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        if self.scenario == "confounded":
            if self.sites != 3:
                raise ValueError(f"the confounded scenario has its own sites (3 training, 3 external); "
                                 f"leave sites at 3, got {self.sites}")
            if self.class_marker_rate:
                raise ValueError("the confounded scenario sets its own markers; leave class_marker_rate at 0")
            self.severity.validate()
        elif self.severity != Severity():
            raise ValueError("a marker severity applies to the confounded scenario only")


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
    spec, style, si, li, i, out_dir, split, marker = args
    ss = np.random.SeedSequence([spec.seed, si, li, i])
    if marker is None:  # the default scenario: the class marker
        kw = dict(class_marker_rate=spec.class_marker_rate)
    else:
        shape, rate = marker
        kw = dict(marker=shape, marker_rate=rate, marker_size=spec.severity.size,
                  marker_contrast=spec.severity.contrast) if shape else {}
    case = render_case(ss, label=LABELS[li], site=style, size=spec.size, lesion_contrast=spec.lesion_contrast, **kw)
    pid = patient_id(spec.seed, si, li, i)
    img_rel, mask_rel = write_case(case, style, Path(out_dir), pid, spec.size)
    return dict(image=img_rel, mask=mask_rel, label=LABELS[li], site=style.name, patient_id=pid, split=split,
                view="PA", sex=case.meta["sex"], age=case.meta["age"], marker=case.meta["marker"])


def _default_jobs(spec: PhantomSpec, out: str) -> list[tuple]:
    return [(spec, st, si, li, i, out, "", None) for si, st in enumerate(site_styles(spec.sites, spec.seed))
            for li in range(len(LABELS)) for i in range(spec.per_class)]


def _confounded_jobs(spec: PhantomSpec, out: str) -> list[tuple]:
    """Every site of the confounded plan (at the spec's severity) with ``len(LABELS) * per_class`` images in its
    class mix; training sites split train/val/test (patient-grouped, stratified by class and site, seeded),
    external sites test."""
    import pandas as pd

    from isnet.data.splits import SPLITS, assign_splits

    cells = []
    for si, plan in enumerate(confounded_plan(spec.severity)):
        for li, n in enumerate(class_counts(plan.mix, len(LABELS) * spec.per_class)):
            shape, rate = plan.markers[li]
            for i in range(n):
                # RANDOM: the shapes in turn, the same way for every class, so shape and class are independent
                cell_shape = SHAPES[i % len(SHAPES)] if shape == RANDOM else shape
                cells.append((si, li, i, patient_id(spec.seed, si, li, i), plan, (cell_shape, rate)))
    train = pd.DataFrame([{"label": LABELS[li], "site": plan.name, "patient_id": pid, "split": ""}
                          for si, li, i, pid, plan, _ in cells if not plan.external])
    split_of = dict(zip(train["patient_id"], assign_splits(train, seed=spec.seed)["split"]))
    for split in SPLITS:
        have = {lab for pid, lab in zip(train["patient_id"], train["label"]) if split_of[pid] == split}
        if have != set(LABELS):
            raise ValueError(f"per_class {spec.per_class} is too small for the confounded scenario: the {split} split "
                             f"of the training sites lacks class(es) {sorted(set(LABELS) - have)}; use per_class >= 2")
    return [(spec, plan.style, si, li, i, out, "test" if plan.external else split_of[pid], marker)
            for si, li, i, pid, plan, marker in cells]


def _write_manifest(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def generate_dataset(out_dir: str | Path, *, sites: int = 3, per_class: int = 200, seed: int = 0, size: int = 256,
                     lesion_contrast: float = DEFAULT_LESION_CONTRAST, class_marker_rate: float = 0.0,
                     workers: int = 1, progress: bool = False, scenario: str = "default",
                     severity: Severity = Severity()) -> Path:
    """Render a phantom data set into ``out_dir``; returns ``out_dir/manifest.csv``.

    ``default``: sites x 3 classes x per_class cases, empty splits. ``confounded``: 3 training and 3 external
    sites of 3 x per_class cases each in the scenario's class mix, splits filled in, a ``marker`` column,
    and the subsets ``manifest_internal.csv`` (training sites) and ``manifest_external.csv`` beside it;
    ``severity`` sets the markers' size, contrast and rate (``scenarios.SEVERITIES`` has the named ones).
    """
    spec = PhantomSpec(sites=sites, per_class=per_class, seed=seed, size=size, lesion_contrast=lesion_contrast,
                       class_marker_rate=class_marker_rate, workers=workers, scenario=scenario, severity=severity)
    spec.validate()
    out = Path(out_dir)
    jobs = _confounded_jobs(spec, str(out)) if scenario == "confounded" else _default_jobs(spec, str(out))
    for st in dict.fromkeys(j[1] for j in jobs):
        (out / st.name / "images").mkdir(parents=True, exist_ok=True)
        (out / st.name / "masks").mkdir(parents=True, exist_ok=True)
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
    if scenario == "confounded":
        external = {p.name for p in confounded_plan(severity) if p.external}
        _write_manifest(manifest, rows, CONFOUNDED_COLUMNS)
        _write_manifest(out / INTERNAL_MANIFEST, [r for r in rows if r["site"] not in external], CONFOUNDED_COLUMNS)
        _write_manifest(out / EXTERNAL_MANIFEST, [r for r in rows if r["site"] in external], CONFOUNDED_COLUMNS)
    else:
        _write_manifest(manifest, rows, MANIFEST_COLUMNS)
    return manifest
