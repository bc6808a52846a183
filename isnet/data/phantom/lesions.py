"""Class-specific lung lesions as extra attenuation confined to the lung masks.

*covid*: bilateral, peripheral, lower-zone ground-glass opacities: broad, faint, patchy blobs where lung air
is partly replaced by fluid. *tb*: upper-zone disease, often asymmetric: small dense nodules, a patchy
consolidation and cavities (a dense spherical wall around an air core). Lesion density is a fraction of
the lung chord that is filled, so it follows the lung's own thickness. Every lesion is multiplied by a
support that is zero closer than ``INSET`` cm to the annotated outline, so lesion support is strictly inside
the mask even after resampling. ``contrast`` scales everything: the difficulty knob.
"""

from __future__ import annotations

import numpy as np

from .anatomy import MU_LUNG, MU_SOFT, Anatomy, Lung
from .geometry import Grid, add_ellipsoid
from .textures import mottle

INSET = 0.9  # cm between a lesion and the mask outline
LABELS = ("normal", "covid", "tb")


def _point_in_lung(rng: np.random.Generator, lung: Lung, t_range: tuple[float, float],
                   w_range: tuple[float, float]) -> tuple[float, float]:
    """A point at relative height t (0 apex, 1 costophrenic) and relative width w (0 medial, 1 lateral)."""
    t = rng.uniform(*t_range)
    w = rng.uniform(*w_range)
    y = lung.v_top + t * (lung.v_cp - lung.v_top)
    s = 1.0 - (1.0 - t) ** 2
    u_lat = lung.u_apex + (lung.u_cp - lung.u_apex) * s ** lung.lat_k
    u_med = lung.u_apex - (lung.u_apex - lung.u_m) * s ** lung.med_k
    u = u_med + w * (u_lat - u_med)
    return lung.side * float(u), float(y)


def lesion_map(rng: np.random.Generator, label: str, a: Anatomy, g: Grid, fields: dict,
               contrast: float) -> np.ndarray:
    """Extra attenuation (n x n, >= 0 except cavity air cores) for this class; zeros for 'normal'."""
    n = g.n
    out = np.zeros((n, n), np.float32)
    if label == "normal":
        return out
    fill = np.zeros((n, n), np.float32)  # fraction of the lung chord filled by fluid/tissue
    solid = np.zeros((n, n), np.float32)  # chord (cm) of solid lesions: nodules, cavity walls
    s = a.scale
    if label == "covid":
        sides = [0, 1] if rng.random() < 0.85 else [int(rng.integers(2))]
        for li in sides:
            lung = a.lungs[li]
            for _ in range(int(rng.integers(2, 5))):
                cx, cy = _point_in_lung(rng, lung, (0.45, 1.0), (0.6, 1.0))
                sig = float(rng.uniform(1.6, 3.2)) * s
                add_ellipsoid(fill, g, cx, cy, sig * 1.8, sig * 1.8 * rng.uniform(0.8, 1.3), 0.5,
                              float(rng.uniform(0.25, 0.45)))
        patch = 0.55 + 0.45 * np.clip(mottle(rng, (n, n), 3.0 * n / 256) * 0.6 + 0.5, 0, 1)
        fill *= patch
    elif label == "tb":
        main = int(rng.integers(2))
        sides = [main] if rng.random() < 0.6 else [main, 1 - main]
        for j, li in enumerate(sides):
            lung = a.lungs[li]
            weight = 1.0 if j == 0 else 0.6
            for _ in range(int(rng.integers(3, 9))):
                cx, cy = _point_in_lung(rng, lung, (0.05, 0.5), (0.15, 0.95))
                r = float(rng.uniform(0.3, 0.75)) * s
                add_ellipsoid(solid, g, cx, cy, r, r, r, float(rng.uniform(0.7, 1.0)) * weight)
            if rng.random() < 0.75:
                cx, cy = _point_in_lung(rng, lung, (0.1, 0.45), (0.3, 0.8))
                r = float(rng.uniform(1.8, 3.0)) * s
                add_ellipsoid(fill, g, cx, cy, r * 1.2, r, 0.5, float(rng.uniform(0.35, 0.6)) * weight)
        patch = 0.5 + 0.5 * np.clip(mottle(rng, (n, n), 2.0 * n / 256) * 0.6 + 0.5, 0, 1)
        fill *= patch
        lung = a.lungs[main]
        for _ in range(int(rng.integers(0, 3))):
            cx, cy = _point_in_lung(rng, lung, (0.12, 0.42), (0.35, 0.75))
            r = float(rng.uniform(0.9, 1.6)) * s
            wall = float(rng.uniform(0.25, 0.45)) * s
            add_ellipsoid(solid, g, cx, cy, r, r, r, 1.0)
            # air core: removes the wall's soft tissue and the lung tissue it replaced
            add_ellipsoid(solid, g, cx, cy, r - wall, r - wall, r - wall, -1.0 - MU_LUNG / (MU_SOFT - MU_LUNG))
    # chord filled x (soft - lung) density, limited to the lung interior
    margin = fields["margin"]
    support = np.clip((margin - INSET) / 0.8, 0.0, 1.0)
    out = (MU_SOFT - MU_LUNG) * (fields["lung_chord"] * fill + solid) * support * contrast
    return out.astype(np.float32)
