"""From line integrals to a processed radiograph: exposure, scatter, quantum noise, log, processing.

The detector sees I = I0 exp(-P) inside the collimated field (a little leakage outside). Scatter adds a
heavily blurred copy of the primary, which lowers contrast behind dense regions. Quantum noise is Poisson,
approximated by a Gaussian with variance proportional to the detected quanta, so dense regions (mediastinum,
abdomen) are noisier, as in real films. The log image is then processed as modern systems do: a large-kernel
equalisation (dynamic-range compression that keeps ribs visible over the heart), a window and a
site-specific contrast curve, and finally the detector blur. Output: float32 in [0, 1], 1 = most attenuating.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .sites import SiteStyle

LUNG_REF = 2.57  # mean lung line integral of an average phantom patient


def lowpass(a: np.ndarray, factor: int, sigma: float) -> np.ndarray:
    """Cheap wide Gaussian blur: box-downsample by ``factor``, blur there, bilinear upsample."""
    n0, n1 = a.shape
    small = np.asarray(Image.fromarray(a, "F").resize((max(n1 // factor, 4), max(n0 // factor, 4)),
                                                         Image.Resampling.BOX))
    small = gaussian_filter(small, sigma, mode="nearest")
    return np.asarray(Image.fromarray(small, "F").resize((n1, n0), Image.Resampling.BILINEAR))


def expose(P: np.ndarray, field: np.ndarray, style: SiteStyle, rng: np.random.Generator,
           shift: float = 0.0) -> np.ndarray:
    """Processed radiograph in [0, 1] (MONOCHROME2 sense) from the line integral P and the field mask.

    ``shift`` moves the window as exposure control / auto-ranging does, so that patients of any size land
    in the same display range (the caller measures it on the lesion-free anatomy, so it carries no class).
    """
    n = P.shape[0]
    primary = np.exp(-P) * field
    scat = lowpass(primary, 8, n / 96) * (style.scatter * 0.25)  # kernel ~ 3 cm
    intensity = primary + scat
    # quanta per pixel scale with pixel area; a denser native grid gets proportionally fewer per pixel
    q = style.photons * (256.0 / n) ** 2
    intensity = intensity + np.sqrt(np.maximum(intensity, 0.0) / q + 2e-8) * rng.standard_normal((n, n),
                                                                                                 dtype=np.float32)
    p = -np.log(np.maximum(intensity, 2e-4))
    if style.eq > 0:
        p = p + style.eq * (p - lowpass(p, 8, n / 110))  # kernel ~ 2.5 cm
    x = (p - style.lo - shift) / (style.hi - style.lo)
    if style.curve == "sigmoid":
        lo_, hi_ = 1 / (1 + np.exp(style.slope * 0.5)), 1 / (1 + np.exp(-style.slope * 0.5))
        x = (1.0 / (1.0 + np.exp(-style.slope * (x - 0.5))) - lo_) / (hi_ - lo_)
    x = np.clip(x, 0.0, 1.0)
    if style.curve == "gamma" and style.gamma != 1.0:
        x = x ** style.gamma
    if style.blur > 0:
        x = gaussian_filter(x, style.blur, mode="nearest")
    return x.astype(np.float32)
