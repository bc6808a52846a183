"""Render one phantom case: anatomy, lesions, artefacts, detector, resampling to the output size."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from .anatomy import MU_LUNG, MU_SOFT, line_integral, sample_anatomy
from .artefacts import CLEAR, MARKERS, SHAPES, attenuating, burn_in
from .detector import LUNG_REF, expose
from .geometry import Grid
from .lesions import LABELS, lesion_map
from .sites import SITE_TABLE, SiteStyle
from .textures import mottle, vessel_markings

DEFAULT_LESION_CONTRAST = 1.4  # calibrated: small CNN reaches ~91% (64 px)


@dataclass
class PhantomCase:
    """One rendered case at the output size. ``image`` is in [0, 1], 1 = most attenuating (MONOCHROME2)."""

    image: np.ndarray      # float32 (size, size)
    mask: np.ndarray       # uint8 0/1 lung mask
    lesion: np.ndarray     # float32 lesion attenuation (0 outside lesions)
    artefact: np.ndarray   # float32 > 0 where a background artefact was drawn
    meta: dict = field(default_factory=dict)


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape[0] == size:
        return a.astype(np.float32, copy=False)
    return np.asarray(Image.fromarray(a.astype(np.float32, copy=False), "F").resize(
        (size, size), Image.Resampling.BILINEAR), np.float32)


def _clean_mask(m: np.ndarray) -> np.ndarray:
    """Keep the largest connected region on each half (one per lung), as an annotator would draw it."""
    out = np.zeros(m.shape, np.uint8)
    half = m.shape[1] // 2
    for sl in (np.s_[:, :half], np.s_[:, half:]):
        lab, k = ndimage.label(m[sl])
        if k:
            sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, k + 1))
            out[sl] = lab == (1 + int(np.argmax(sizes)))
    return out


def render_case(seed: int | np.random.SeedSequence, *, label: str, site: SiteStyle | int = 0, size: int = 256,
                lesion_contrast: float = DEFAULT_LESION_CONTRAST, class_marker_rate: float = 0.0,
                marker: str | None = None, marker_rate: float = 0.0, marker_size: float = 0.05,
                marker_contrast: float = 1.0) -> PhantomCase:
    """Render one image, its lung mask and metadata, fully determined by ``seed``.

    Separate child generators drive anatomy, lesions, artefacts and noise, so changing one knob (for example
    ``lesion_contrast``, ``class_marker_rate`` or ``marker``) leaves the rest of the case unchanged.

    The background marker is the class marker by default (a ring on covid, a triangle on tb, with
    probability ``class_marker_rate``). ``marker`` (one of ``SHAPES``) replaces it by that shape with
    probability ``marker_rate`` whatever the label: the confounded scenario's site markers (which try every
    corner before giving up), with side ``marker_size`` (fraction of the image side) and stroke intensity
    ``marker_contrast``. ``meta["marker"]`` is the shape actually drawn ("" if none, or if it found no room
    outside the lungs).
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if not lesion_contrast >= 0:
        raise ValueError(f"lesion_contrast must be >= 0, got {lesion_contrast}")
    if not 0.0 <= class_marker_rate <= 1.0:
        raise ValueError(f"class_marker_rate must be in [0, 1], got {class_marker_rate}")
    if marker is not None:
        if marker not in SHAPES:
            raise ValueError(f"marker must be one of {SHAPES}, got {marker!r}")
        if not 0.0 <= marker_rate <= 1.0:
            raise ValueError(f"marker_rate must be in [0, 1], got {marker_rate}")
        if class_marker_rate > 0:
            raise ValueError("give either marker (a shape for any label) or class_marker_rate, not both")
        shape, rate, any_corner = marker, marker_rate, True
    else:
        shape, rate, any_corner = MARKERS.get(label, ""), class_marker_rate, False
    style = SITE_TABLE[site] if isinstance(site, int) else site
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    r_anat, r_pose, r_les, r_art, r_noise, r_burn, r_tex = (np.random.default_rng(c) for c in ss.spawn(7))

    a = sample_anatomy(r_anat)
    n = int(round(size * style.native / 2)) * 2
    g = Grid(n, style.fov + float(r_pose.normal(0, 0.6)), dx=float(r_pose.normal(0, 0.5)),
             dy=style.dy + float(r_pose.normal(0, 0.5)))
    P, fields = line_integral(a, g)
    lc = fields["lung_chord"]
    # soft-tissue mottle and vascular markings
    P += 0.035 * mottle(r_tex, (n, n), 2.0 * n / 256)
    hila = [(side * (a.lungs[i].u_m + 1.0 * a.scale), a.lungs[0].v_top + 8.5 * a.scale)
            for i, side in ((0, -1), (1, 1))]
    P += (MU_SOFT - MU_LUNG) * vessel_markings(r_tex, g.x, g.y, hila, lc)
    inner = fields["margin"][::3, ::3] > 1.0
    shift = float(P[::3, ::3][inner].mean()) - LUNG_REF if inner.any() else 0.0
    les = lesion_map(r_les, label, a, g, fields, lesion_contrast)
    P += les
    # collimation: a field box that always contains the lungs with room to spare
    margin = fields["margin"]
    near = margin > -CLEAR * 2
    rows, cols = np.flatnonzero(near.any(axis=1)), np.flatnonzero(near.any(axis=0))
    box = (0, n, 0, n)
    fld = np.ones((n, n), np.float32)
    collimated = bool(r_pose.random() < style.collimation_rate)
    if collimated and rows.size:
        r0 = int(r_pose.uniform(0, rows[0]))
        r1 = n - int(r_pose.uniform(0, n - 1 - rows[-1]))
        c0 = int(r_pose.uniform(0, cols[0] * 0.8))
        c1 = n - int(r_pose.uniform(0, (n - 1 - cols[-1]) * 0.8))
        box = (r0, r1, c0, c1)
        fld[:] = 0.04
        fld[r0:r1, c0:c1] = 1.0
    art, meta_a = attenuating(r_art, style, a, g, fields, box)
    P += art
    img = expose(P, fld, style, r_noise, shift=shift)
    img, over, meta_b = burn_in(r_burn, style, img, fields, shape, rate, any_corner, marker_size, marker_contrast)

    image = np.clip(_resize(img, size), 0.0, 1.0)
    mask = _clean_mask(_resize(margin, size) > 0)
    lesion = _resize(np.abs(les), size)
    artefact = _resize(art + over, size)
    meta = dict(label=label, site=style.name, sex=a.sex, age=a.age, native=n, collimated=collimated,
                **meta_a, **meta_b)
    return PhantomCase(image=image, mask=mask, lesion=lesion, artefact=artefact, meta=meta)
