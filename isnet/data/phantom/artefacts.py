"""Background artefacts: laterality letters, text tags, wires, tubes, collimation, borders, class markers.

All of them live strictly outside the lung masks: every artefact is multiplied by a background indicator that
is zero within ``CLEAR`` cm of a lung outline, so they stay outside the mask after resampling too. Lead
letters, wires and tubes attenuate the beam (added to the line integral before exposure, so they get noise and
blur like anatomy); text tags, borders and markers are burned into the processed image. Artefact rates
come from the site style and never from the class, except the optional marker: the class marker
(``class_marker_rate``, the shortcut feature used by bias tests) or, in the confounded scenario, a site
marker whose rate the scenario sets per site and class (``scenarios.py``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .anatomy import Anatomy
from .geometry import Grid, add_ellipsoid, add_segment_tube
from .sites import SiteStyle

CLEAR = 1.0  # cm kept free around the lung outline
MARKERS = {"covid": "circle", "tb": "triangle"}  # class markers of ``class_marker_rate``
SHAPES = ("circle", "triangle", "square")          # every marker shape


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(px, 6))


def glyph(text: str, px: int) -> np.ndarray:
    """Text rendered with PIL's built-in font as a float32 0..1 array (tight box)."""
    font = _font(px)
    x0, y0, x1, y1 = font.getbbox(text)
    im = Image.new("L", (max(x1 - x0, 1) + 2, max(y1 - y0, 1) + 2), 0)
    ImageDraw.Draw(im).text((1 - x0, 1 - y0), text, fill=255, font=font)
    return np.asarray(im, np.float32) / 255.0


def _shape(kind: str, px: int) -> np.ndarray:
    im = Image.new("L", (px, px), 0)
    d = ImageDraw.Draw(im)
    if kind == "circle":
        d.ellipse((1, 1, px - 2, px - 2), outline=255, width=max(px // 6, 1))
    elif kind == "square":
        d.rectangle((1, 1, px - 2, px - 2), outline=255, width=max(px // 5, 1))
    else:
        d.polygon([(px / 2, 1), (px - 2, px - 2), (1, px - 2)], fill=255)
    return np.asarray(im, np.float32) / 255.0


def _place(canvas: np.ndarray, stamp: np.ndarray, background: np.ndarray, rng: np.random.Generator,
           corner: int, inset: int) -> bool:
    """Paste ``stamp`` (max) near ``corner`` where it does not touch the lungs; False if nowhere fits."""
    H, W = canvas.shape
    h, w = stamp.shape
    if h + 2 * inset >= H or w + 2 * inset >= W:
        return False
    for _ in range(6):
        jy, jx = (int(v) for v in rng.integers(0, max(min(H, W) // 10, 1), size=2))
        r0 = inset + jy if corner in (0, 1) else H - inset - h - jy
        c0 = inset + jx if corner in (0, 2) else W - inset - w - jx
        r0, c0 = min(max(r0, 0), H - h), min(max(c0, 0), W - w)
        if background[r0:r0 + h, c0:c0 + w].min() > 0:
            np.maximum(canvas[r0:r0 + h, c0:c0 + w], stamp, out=canvas[r0:r0 + h, c0:c0 + w])
            return True
    return False


def background_map(fields: dict) -> np.ndarray:
    """1 where artefacts may go (farther than CLEAR cm outside every lung), else 0."""
    return (fields["margin"] < -CLEAR).astype(np.float32)


def attenuating(rng: np.random.Generator, style: SiteStyle, a: Anatomy, g: Grid, fields: dict,
                field_box: tuple[int, int, int, int]) -> tuple[np.ndarray, dict]:
    """Lead letter, ECG wires with electrodes and a midline tube as extra attenuation (background only)."""
    n = g.n
    bg = background_map(fields)
    art = np.zeros((n, n), np.float32)
    meta = {"letter": "", "wires": 0, "tube": False}
    r0, r1, c0, c1 = field_box
    if rng.random() < style.letter_rate:
        px = int(round(n * rng.uniform(0.05, 0.07)))
        stamp = glyph(style.letter, px)
        sub = np.zeros((r1 - r0, c1 - c0), np.float32)
        if _place(sub, stamp, bg[r0:r1, c0:c1], rng, style.letter_corner, max(n // 40, 1)):
            art[r0:r1, c0:c1] += sub * 2.5
            meta["letter"] = style.letter
    s = a.scale
    if rng.random() < style.wire_rate:
        k = int(rng.integers(1, 4))
        for _ in range(k):
            side = 1 if rng.random() < 0.5 else -1
            lung = a.lungs[0 if side < 0 else 1]
            if rng.random() < 0.5:  # lateral chest wall electrode, lead running down and out
                ex, ey = side * (lung.u_cp + rng.uniform(1.8, 3.0) * s), rng.uniform(-4, 6) * s
                pts = [(ex, ey), (ex + side * rng.uniform(1, 3), ey + 6), (ex + side * rng.uniform(2, 6), 30.0)]
            else:  # shoulder electrode, lead running up and out
                ex, ey = side * rng.uniform(lung.u_cp, a.torso_a + 2), lung.v_top - rng.uniform(2.5, 4.0) * s
                pts = [(ex, ey), (ex + side * rng.uniform(1, 3), ey - 3), (ex + side * rng.uniform(3, 8), -30.0)]
            wire = np.zeros((n, n), np.float32)
            for p, q in zip(pts[:-1], pts[1:]):
                add_segment_tube(wire, g, p, q, 0.09, 4.0)
            add_ellipsoid(wire, g, ex, ey, 1.0, 1.0, 0.15, 1.0)
            add_ellipsoid(wire, g, ex, ey, 0.3, 0.3, 0.3, 3.0)
            art += wire
            meta["wires"] += 1
    if rng.random() < style.tube_rate:
        x0 = a.spine_x + rng.uniform(-0.3, 0.6)
        tube = np.zeros((n, n), np.float32)
        add_segment_tube(tube, g, (x0, -30.0), (x0 + 0.3, a.lungs[0].v_top + 4.5 * s), 0.12, 2.5)
        art += tube
        meta["tube"] = True
    return art * bg, meta


def burn_in(rng: np.random.Generator, style: SiteStyle, img: np.ndarray, fields: dict, marker: str,
            marker_rate: float, any_corner: bool = False, marker_size: float = 0.05,
            marker_contrast: float = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Burn text tags, a border frame and, with probability ``marker_rate``, the marker shape ``marker``
    (one of ``SHAPES``, or "" for none; side ``marker_size`` of the image's, strokes at ``marker_contrast``)
    into the processed image. The marker goes to a random corner; with ``any_corner`` it tries the other
    corners in turn when that one has no room outside the lungs."""
    n = img.shape[0]
    bg = background_map(fields)
    over = np.zeros((n, n), np.float32)
    meta: dict = {"tag": "", "border": 0, "marker": ""}
    if rng.random() < style.tag_rate:
        text = str(rng.choice(list(style.tags)))
        corner = (style.letter_corner + 1 + int(rng.integers(3))) % 4
        if _place(over, glyph(text, int(n * 0.035) + 2), bg, rng, corner, max(n // 30, 1)):
            meta["tag"] = text
    marker_draw = rng.random()
    corner_m = int(rng.integers(4))
    if marker and marker_draw < marker_rate:
        stamp = _shape(marker, max(int(n * marker_size), 5)) * np.float32(marker_contrast)
        for k in range(4 if any_corner else 1):
            if _place(over, stamp, bg, rng, (corner_m + k) % 4, max(n // 20, 1)):
                meta["marker"] = marker
                break
    out = np.maximum(img, over * bg)
    border_map = np.zeros((n, n), np.float32)
    if rng.random() < style.border_rate:
        rows = np.flatnonzero((fields["margin"] > -CLEAR).any(axis=1))
        cols = np.flatnonzero((fields["margin"] > -CLEAR).any(axis=0))
        room = min(rows[0], cols[0], n - 1 - rows[-1], n - 1 - cols[-1]) if rows.size else n // 4
        b = min(int(n * rng.uniform(0.02, 0.05)), int(room))
        if b > 0:
            border_map[:b] = border_map[-b:] = 1
            border_map[:, :b] = border_map[:, -b:] = 1
            out = np.where(border_map > 0, np.float32(style.border_value), out)
            meta["border"] = b
    return out.astype(np.float32), np.maximum(over * bg, border_map), meta
