"""Pixel grid and analytic chord lengths of simple 3-D solids under a parallel beam along z.

The beam runs along z (posterior-anterior); x is the patient's lateral axis (image columns, patient right on
the image left as in a PA view) and y points down (image rows). Units are centimetres. Every solid here
returns the length of the beam path inside it for each pixel, computed in closed form, so no voxel volume is
ever built. Work is restricted to each solid's bounding box to keep one image in a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32


@dataclass(frozen=True)
class Grid:
    """Pixel centres of an n x n detector covering ``fov`` cm, patient shifted by (dx, dy) cm."""

    n: int
    fov: float
    dx: float = 0.0
    dy: float = 0.0

    @property
    def pixel(self) -> float:
        return self.fov / self.n

    @property
    def x(self) -> np.ndarray:
        """Column coordinates (1, n) in patient cm."""
        return (((np.arange(self.n, dtype=F32) + 0.5) * self.pixel - self.fov / 2) - self.dx)[None, :]

    @property
    def y(self) -> np.ndarray:
        """Row coordinates (n, 1) in patient cm."""
        return (((np.arange(self.n, dtype=F32) + 0.5) * self.pixel - self.fov / 2) - self.dy)[:, None]

    def cols(self, x0: float, x1: float) -> slice:
        """Column slice covering patient x in [x0, x1] (may be empty)."""
        a = int(np.floor((x0 + self.dx + self.fov / 2) / self.pixel - 0.5))
        b = int(np.ceil((x1 + self.dx + self.fov / 2) / self.pixel - 0.5)) + 1
        return slice(min(max(a, 0), self.n), min(max(b, 0), self.n))

    def rows(self, y0: float, y1: float) -> slice:
        """Row slice covering patient y in [y0, y1] (may be empty)."""
        a = int(np.floor((y0 + self.dy + self.fov / 2) / self.pixel - 0.5))
        b = int(np.ceil((y1 + self.dy + self.fov / 2) / self.pixel - 0.5)) + 1
        return slice(min(max(a, 0), self.n), min(max(b, 0), self.n))


def add_ellipsoid(out: np.ndarray, g: Grid, cx: float, cy: float, a: float, b: float, c: float,
                  weight: float, angle: float = 0.0) -> None:
    """out += weight * chord through an ellipsoid (semi-axes a, b in-plane rotated by angle, c along beam)."""
    r = max(a, b)
    rs, cs = g.rows(cy - r, cy + r), g.cols(cx - r, cx + r)
    if rs.start >= rs.stop or cs.start >= cs.stop:
        return
    xx = g.x[:, cs] - cx
    yy = g.y[rs, :] - cy
    if angle:
        ca, sa = np.cos(angle), np.sin(angle)
        xr, yr = ca * xx + sa * yy, -sa * xx + ca * yy
    else:
        xr, yr = xx, yy
    q = 1.0 - (xr / a) ** 2 - (yr / b) ** 2
    out[rs, cs] += (2.0 * c * weight) * np.sqrt(np.maximum(q, 0.0))


def add_curve_tube(out: np.ndarray, g: Grid, u0: float, u1: float, f, side: int, r: float, c: float,
                   weight: float, tz=None, shell: float = 0.0, inner_weight: float = 0.0) -> None:
    """out += weight * chord through a tube whose projected centre line is y = f(u), u = side * x.

    The tube has an elliptic cross-section: half-height ``r`` in the image plane and half-depth ``c`` along
    the beam. Locally the tube is a straight cylinder, whose chord for a beam at in-plane distance d from the
    projected axis is 2c*sqrt(1 - d^2/r^2) / sqrt(1 - tz^2), tz being the axis' component along the beam
    (ribs turning towards the beam look denser). With ``shell`` in (0, 1) the inner core (scaled by shell)
    contributes ``inner_weight`` instead of ``weight``: cortical bone around marrow.
    """
    lo, hi = (u0, u1) if side > 0 else (-u1, -u0)
    cs = g.cols(lo, hi)
    if cs.start >= cs.stop:
        return
    u = side * g.x[0, cs]
    inside = (u >= u0) & (u <= u1)
    if not inside.any():
        return
    uc = np.clip(u, u0, u1)
    fy = f(uc).astype(F32)
    h = 1e-3
    slope = (f(uc + h) - f(uc - h)) / (2 * h)
    inv = (1.0 / np.sqrt(1.0 + slope * slope)).astype(F32)
    obl = np.ones_like(inv) if tz is None else (1.0 / np.sqrt(1.0 - np.clip(tz(uc), 0.0, 0.95) ** 2)).astype(F32)
    ymin, ymax = float(fy[inside].min()), float(fy[inside].max())
    pad = r / float(inv[inside].min())
    rs = g.rows(ymin - pad, ymax + pad)
    if rs.start >= rs.stop:
        return
    d = (g.y[rs, :] - fy[None, :]) * inv[None, :]
    q = 1.0 - (d / r) ** 2
    chord = np.sqrt(np.maximum(q, 0.0)) * (weight * 2 * c)
    if shell > 0:
        qi = 1.0 - (d / (r * shell)) ** 2
        chord -= np.sqrt(np.maximum(qi, 0.0)) * ((weight - inner_weight) * 2 * c * shell)
    chord *= (obl * inside)[None, :]
    out[rs, cs] += chord


def add_segment_tube(out: np.ndarray, g: Grid, p0: tuple[float, float], p1: tuple[float, float], r: float,
                     weight: float, tz: float = 0.0) -> None:
    """out += weight * chord through a straight cylinder of radius r between projected points p0 and p1."""
    (x0, y0), (x1, y1) = p0, p1
    rs = g.rows(min(y0, y1) - r, max(y0, y1) + r)
    cs = g.cols(min(x0, x1) - r, max(x0, x1) + r)
    if rs.start >= rs.stop or cs.start >= cs.stop:
        return
    vx, vy = x1 - x0, y1 - y0
    L2 = max(vx * vx + vy * vy, 1e-9)
    px = g.x[:, cs] - x0
    py = g.y[rs, :] - y0
    t = np.clip((px * vx + py * vy) / L2, 0.0, 1.0)
    dx = px - t * vx
    dy = py - t * vy
    q = 1.0 - (dx * dx + dy * dy) / (r * r)
    out[rs, cs] += (2 * r * weight / np.sqrt(1 - tz * tz)) * np.sqrt(np.maximum(q, 0.0))
