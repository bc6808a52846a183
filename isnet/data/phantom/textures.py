"""Texture banks shared by all images: soft-tissue mottle and vessel markings radiating from the hila.

Filtering noise is the costliest step of a naive renderer, so each process builds a small bank once, from a
fixed seed (hence identical in every worker), and each image only picks a bank entry and an offset from its
own generator. Vessel markings are stored in polar coordinates around the hilum: noise smoothed strongly
along the radius and little along the angle gives branching-looking streaks that taper outwards.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

BANK_SEED = 20240611
N_BANK = 6
MOTTLE = 256
POLAR = (256, 96)  # (angle bins, radius bins)


@lru_cache(maxsize=1)
def mottle_bank() -> np.ndarray:
    """(N_BANK, 256, 256) zero-mean unit-std smooth noise with a 1/f-like mix of scales, wrap-around."""
    rng = np.random.default_rng(BANK_SEED)
    out = np.empty((N_BANK, MOTTLE, MOTTLE), np.float32)
    for k in range(N_BANK):
        w = rng.standard_normal((MOTTLE, MOTTLE))
        t = sum(gaussian_filter(w, s, mode="wrap") * s for s in (1.0, 2.5, 6.0))
        out[k] = (t - t.mean()) / t.std()
    return out


@lru_cache(maxsize=1)
def vessel_bank() -> np.ndarray:
    """(N_BANK, angles, radii) non-negative vessel-like streak intensity, about 0..1."""
    rng = np.random.default_rng(BANK_SEED + 1)
    na, nr = POLAR
    out = np.empty((N_BANK, na, nr), np.float32)
    for k in range(N_BANK):
        w = rng.standard_normal((na, nr))
        t = gaussian_filter(w, (1.2, 7.0), mode=("wrap", "nearest"))
        t = (t - t.mean()) / t.std()
        out[k] = np.clip(t - 0.9, 0.0, None) ** 0.8
    return out / out.max()


def mottle(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """A crop of the mottle bank, resampled by nearest index so one bank pixel spans ``scale_px`` pixels."""
    bank = mottle_bank()
    k = int(rng.integers(N_BANK))
    oy, ox = rng.integers(0, MOTTLE, size=2)
    step = 1.0 / max(scale_px, 1e-3)
    iy = (oy + (np.arange(shape[0]) * step).astype(np.int64)) % MOTTLE
    ix = (ox + (np.arange(shape[1]) * step).astype(np.int64)) % MOTTLE
    return bank[k][np.ix_(iy, ix)]


def vessel_markings(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, hila: list[tuple[float, float]],
                    lung_chord: np.ndarray) -> np.ndarray:
    """Vascular markings (cm of soft tissue) radiating from the hila, tapering towards the periphery."""
    bank = vessel_bank()
    na, nr = POLAR
    out = np.zeros(lung_chord.shape, np.float32)
    for hx, hy in hila:
        k = int(rng.integers(N_BANK))
        off = int(rng.integers(na))
        cols = np.flatnonzero((x[0] > hx) if hx > 0 else (x[0] < hx))
        if cols.size == 0:
            continue
        cs = slice(cols[0], cols[-1] + 1)
        rows = np.flatnonzero(lung_chord[:, cs].any(axis=1))
        if rows.size == 0:
            continue
        rs = slice(rows[0], rows[-1] + 1)
        dx, dy = x[:, cs] - hx, y[rs, :] - hy
        r = np.sqrt(dx * dx + dy * dy)
        ang = np.arctan2(dy, dx)
        ia = ((ang * (na / (2 * np.pi))).astype(np.int64) + off) % na
        ir = np.minimum((r * (nr / 16.0)).astype(np.int64), nr - 1)
        out[rs, cs] += bank[k][ia, ir] * np.exp(-r / 7.0)
    return out * 0.9 * np.minimum(lung_chord / 6.0, 1.0)
