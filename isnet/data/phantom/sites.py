"""Acquisition styles of the phantom's hospitals ("sites").

Each site has its own detector and processing (dose, scatter, blur, native resolution, equalisation, contrast
curve), storage (PNG or DICOM, bit depth, MONOCHROME1/2) and background habits (laterality letter, text
tags, wires and tubes, collimation, borders). Real multi-site databases differ in exactly these ways, so a
classifier can recognise the site from the background alone. ``site_styles(n, seed)`` returns the first n
rows of the table; beyond the table, styles are drawn around a table row from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class SiteStyle:
    """Everything that differs between sites. Lengths are cm, resolutions multiples of the output size."""

    name: str
    fmt: str = "png"             # "png" | "dicom"
    bits: int = 8                # png: 8/16, dicom: 12/16
    photometric: str = "MONOCHROME2"
    native: float = 1.0          # render at native * size pixels, then resample to size
    fov: float = 33.0            # field of view (cm)
    photons: float = 3.0e4       # quanta per pixel in the unattenuated beam (at 256 px)
    scatter: float = 0.5         # scatter-to-primary scale
    blur: float = 0.6            # detector blur sigma (native pixels)
    eq: float = 0.6              # large-kernel equalisation strength
    lo: float = 0.4              # log-exposure mapped to 0
    hi: float = 4.6              # log-exposure mapped to 1
    curve: str = "gamma"         # "gamma" | "sigmoid"
    gamma: float = 1.0
    slope: float = 6.0           # sigmoid steepness
    letter: str = "R"
    letter_rate: float = 0.9
    letter_corner: int = 0       # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    tags: tuple[str, ...] = ("PA",)
    tag_rate: float = 0.5
    wire_rate: float = 0.2
    tube_rate: float = 0.1
    collimation_rate: float = 0.3
    border_rate: float = 0.0
    border_value: float = 0.0
    dy: float = 0.8              # mean vertical framing offset (cm)


SITE_TABLE: tuple[SiteStyle, ...] = (
    SiteStyle("site_a", fmt="png", bits=8, photometric="MONOCHROME2", native=1.0, fov=32.5, photons=3e4,
              scatter=0.5, blur=0.6, eq=0.5, lo=0.45, hi=4.7, curve="gamma", gamma=0.95, letter="R",
              letter_corner=0, tags=("PA", "ERECT"), tag_rate=0.5, wire_rate=0.25, tube_rate=0.1,
              collimation_rate=0.3, dy=0.6),
    SiteStyle("site_b", fmt="dicom", bits=12, photometric="MONOCHROME1", native=1.5, fov=34.0,
              photons=6e4, scatter=0.35, blur=0.8, eq=0.9, lo=0.3, hi=4.9, curve="sigmoid", slope=5.0,
              letter="L", letter_rate=0.95, letter_corner=1, tags=("CHEST PA", "STANDING", "KV 120"),
              tag_rate=0.8, wire_rate=0.1, tube_rate=0.3, collimation_rate=0.8, dy=1.2),
    SiteStyle("site_c", fmt="png", bits=16, photometric="MONOCHROME2", native=0.75, fov=31.5,
              photons=1.2e4, scatter=0.8, blur=0.9, eq=0.3, lo=0.6, hi=4.4, curve="gamma", gamma=1.25,
              letter="R", letter_rate=0.5, letter_corner=2, tags=("PA",), tag_rate=0.3, wire_rate=0.4,
              tube_rate=0.15, collimation_rate=0.1, border_rate=0.7, border_value=0.0, dy=0.2),
    SiteStyle("site_d", fmt="dicom", bits=16, photometric="MONOCHROME2", native=1.25, fov=33.0,
              photons=4e4, scatter=0.45, blur=0.7, eq=0.7, lo=0.4, hi=5.0, curve="sigmoid", slope=4.0,
              letter="L", letter_rate=0.7, letter_corner=3, tags=("PA", "INSP"), tag_rate=0.6,
              wire_rate=0.15, tube_rate=0.2, collimation_rate=0.5, border_rate=0.3, border_value=1.0,
              dy=1.0),
)


def site_styles(n: int, seed: int = 0) -> list[SiteStyle]:
    """The first n site styles; rows past the table are seeded variations of a table row."""
    if n < 1:
        raise ValueError(f"sites must be >= 1, got {n}")
    out = list(SITE_TABLE[:n])
    for i in range(len(SITE_TABLE), n):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919, i]))
        base = SITE_TABLE[i % len(SITE_TABLE)]
        fmt = "dicom" if rng.random() < 0.5 else "png"
        out.append(replace(
            base, name=_site_name(i), fmt=fmt, bits=int(rng.choice([12, 16] if fmt == "dicom" else [8, 16])),
            photometric="MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
            native=float(rng.choice([0.75, 1.0, 1.25, 1.5])), fov=float(rng.uniform(31.0, 34.5)),
            photons=float(np.exp(rng.uniform(np.log(1e4), np.log(7e4)))), scatter=float(rng.uniform(0.3, 0.9)),
            blur=float(rng.uniform(0.5, 1.0)), eq=float(rng.uniform(0.2, 1.0)),
            lo=float(rng.uniform(0.3, 0.6)), hi=float(rng.uniform(4.3, 5.1)),
            curve=str(rng.choice(["gamma", "sigmoid"])), gamma=float(rng.uniform(0.85, 1.3)),
            slope=float(rng.uniform(3.5, 6.0)), letter=str(rng.choice(["L", "R"])),
            letter_rate=float(rng.uniform(0.4, 1.0)), letter_corner=int(rng.integers(4)),
            tag_rate=float(rng.uniform(0.2, 0.9)), wire_rate=float(rng.uniform(0.05, 0.4)),
            tube_rate=float(rng.uniform(0.05, 0.3)), collimation_rate=float(rng.uniform(0.1, 0.8)),
            border_rate=float(rng.uniform(0.0, 0.6)), border_value=float(rng.integers(2)),
            dy=float(rng.uniform(0.2, 1.3))))
    return out


def _site_name(i: int) -> str:
    """site_a .. site_z, then site_aa, site_ab, ..."""
    letters = ""
    i += 1
    while i > 0:
        i, r = divmod(i - 1, 26)
        letters = chr(ord("a") + r) + letters
    return f"site_{letters}"
