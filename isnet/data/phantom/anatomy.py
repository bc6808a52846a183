"""3-D chest anatomy of one phantom patient and its projection (line integral of attenuation).

Organs are simple solids with closed-form chord lengths (see ``geometry``): an elliptic torso with neck and
shoulders, two lungs, heart, aortic knob, trachea and main bronchi, spine, ribs (posterior and anterior arcs as
curved tubes with cortical shells), clavicles, humeral heads, diaphragm domes, gastric bubble and, for female
patients, breast shadows. Each lung is the solid {|z - z0| < h(x, y)}: its projected outline is bounded by a
lateral wall, a medial (mediastinal) border, an apex and a diaphragm dome; the half depth h grows from the
outline inwards and from apex to base, so its chord 2h is exact. The heart and aorta displace lung tissue in
front of and behind them. The annotated lung mask is the outline minus the cardiac and aortic shadows, as a
radiologist would draw it. Attenuation values are for an effective energy of roughly 60 keV.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import Grid, add_curve_tube, add_ellipsoid, add_segment_tube

MU_SOFT = 0.20   # soft tissue, 1/cm
MU_LUNG = 0.06   # aerated lung
MU_CORTEX = 0.38  # cortical bone minus soft tissue
MU_MARROW = 0.06  # cancellous bone minus soft tissue


@dataclass
class Lung:
    """Projected outline and depth of one lung; u is the distance from the midline, positive outwards."""

    side: int          # +1: image right (patient left), -1: image left (patient right)
    v_top: float       # apex height (cm, y down)
    v_cp: float        # costophrenic angle height
    u_m: float         # medial border distance from the midline
    u_apex: float
    u_cp: float        # lateral extent at the costophrenic angle
    dome_u: float      # dome summit position
    dome_h: float      # dome summit height above the costophrenic angle
    depth_top: float   # half depth (AP) near the apex
    depth_base: float  # half depth at the base
    lat_k: float       # lateral wall bulge exponent
    med_k: float

    def margins(self, g: Grid) -> np.ndarray:
        """Approximate signed distance (cm, positive inside) to this lung's full projected outline."""
        u = self.side * g.x  # (1, n)
        v = g.y  # (n, 1)
        t = np.clip((v - self.v_top) / (self.v_cp - self.v_top), 0.0, 1.0)
        s = 1.0 - (1.0 - t) ** 2
        u_lat = self.u_apex + (self.u_cp - self.u_apex) * s ** self.lat_k
        u_med = self.u_apex - (self.u_apex - self.u_m) * s ** self.med_k
        wl = self.u_cp - self.dome_u
        wm = (self.dome_u - self.u_m) * 1.7
        w = np.where(u >= self.dome_u, wl, wm)
        dome = self.v_cp - self.dome_h * (1.0 - np.minimum(((u - self.dome_u) / w) ** 2, 1.6))
        m = np.minimum(u_lat - u, u - u_med)
        m = np.minimum(m, dome - v)
        return np.minimum(m, v - self.v_top).astype(np.float32)

    def depth(self, g: Grid) -> np.ndarray:
        t = np.clip((g.y - self.v_top) / (self.v_cp - self.v_top), 0.0, 1.0)
        return (self.depth_top + (self.depth_base - self.depth_top) * t).astype(np.float32)


@dataclass
class Anatomy:
    """All shape parameters of one patient (cm)."""

    sex: str
    age: int
    scale: float
    lungs: tuple[Lung, Lung]
    heart: tuple[float, float, float, float, float, float]  # cx, cy, a, b, c, angle
    aorta: tuple[float, float, float]  # cx, cy, r
    torso_a: float
    torso_c: float
    shoulder_y: float
    spine_x: float
    bone: float  # bone density factor (drops with age)
    ribs: list[dict] = field(default_factory=list)
    breasts: float = 0.0
    dome_sag: float = 0.0


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a patient: sex, age and every shape parameter, all from ``rng``."""
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(np.clip(rng.normal(52, 17), 18, 90))
    s = float(rng.normal(1.04 if sex == "M" else 0.96, 0.04))
    n = lambda m, sd: float(rng.normal(m, sd))  # noqa: E731
    v_top = -12.8 * s + n(0, 0.5)
    lungs = []
    for side in (-1, 1):
        right = side < 0  # patient right lung (image left): wider, higher dome
        u_m = (2.0 if right else 2.4) * s + n(0, 0.2)
        width = (13.0 if right else 12.6) * s + n(0, 0.6)
        v_cp = (10.6 if right else 11.4) * s + n(0, 0.6)
        u_cp = u_m + width
        lungs.append(Lung(
            side=side, v_top=v_top + n(0, 0.3), v_cp=v_cp, u_m=u_m,
            u_apex=u_m + width * float(rng.uniform(0.3, 0.42)), u_cp=u_cp,
            dome_u=u_m + width * float(rng.uniform(0.38, 0.5)),
            dome_h=(4.6 if right else 4.0) * s + n(0, 0.5),
            depth_top=3.5 * s, depth_base=8.0 * s + n(0, 0.4),
            lat_k=float(rng.uniform(0.45, 0.65)), med_k=float(rng.uniform(0.3, 0.45)),
        ))
    lr = lungs[0]
    heart_w = float(rng.uniform(5.6, 7.0)) * s
    heart = (1.6 * s + n(0, 0.4), lr.v_cp - 4.6 * s + n(0, 0.4), heart_w, heart_w * 0.72, 5.5 * s,
             float(np.deg2rad(rng.uniform(-38, -22))))
    aorta = (2.6 * s + n(0, 0.2), v_top + 5.2 * s + n(0, 0.4), 1.7 * s)
    torso_a = max(lg.u_cp for lg in lungs) + 2.6 * s + n(0, 0.4)
    a = Anatomy(sex=sex, age=age, scale=s, lungs=(lungs[0], lungs[1]), heart=heart, aorta=aorta,
                torso_a=torso_a, torso_c=10.5 * s + n(0, 0.6), shoulder_y=v_top - 1.5 * s + n(0, 0.5),
                spine_x=n(0, 0.25), bone=float(np.clip(1.1 - 0.006 * (age - 30), 0.7, 1.1)))
    spacing = (lungs[0].v_cp - v_top) / 8.6
    for side, lung in ((-1, lungs[0]), (1, lungs[1])):
        for k in range(10):
            yk = v_top - 1.6 * s + k * spacing * (0.92 + 0.016 * k) + n(0, 0.12)
            a.ribs.append(dict(side=side, k=k, y=yk, arch=float(rng.uniform(0.7, 1.2)) * s,
                               drop=float(rng.uniform(1.6, 2.4)) * s * (1 + 0.05 * k),
                               ant_drop=(3.2 + 0.45 * k) * s + n(0, 0.3), r=(0.55 + 0.02 * k) * s))
    if sex == "F":
        a.breasts = float(rng.uniform(0.6, 1.8)) * s
    return a


def _heart_margin(a: Anatomy, g: Grid) -> tuple[np.ndarray, np.ndarray]:
    cx, cy, ha, hb, _, ang = a.heart
    xx, yy = g.x - cx, g.y - cy
    ca, sa = np.cos(ang), np.sin(ang)
    xr, yr = ca * xx + sa * yy, -sa * xx + ca * yy
    rho = np.sqrt((xr / ha) ** 2 + (yr / hb) ** 2)
    ax, ay, ar = a.aorta
    rho_a = np.sqrt((g.x - ax) ** 2 + (g.y - ay) ** 2) / ar
    return ((rho - 1.0) * hb).astype(np.float32), ((rho_a - 1.0) * ar).astype(np.float32)


def lung_fields(a: Anatomy, g: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(margin, lung chord after displacement by heart/aorta, side map) at every pixel.

    ``margin`` is the approximate signed distance (cm) to the annotated outline: > 0 inside a lung mask.
    ``side`` is -1/+1 for the lung a pixel belongs to (0 elsewhere).
    """
    hm, am = _heart_margin(a, g)
    n = g.n
    margin = np.full((n, n), -50.0, np.float32)
    chord = np.zeros((n, n), np.float32)
    side = np.zeros((n, n), np.int8)
    for lung in a.lungs:
        m = lung.margins(g)
        h = lung.depth(g) * (1.0 - np.exp(-np.maximum(m, 0.0) / 1.6))
        # displaced by the heart (in front) and aorta: chord reduced where their shadows overlap
        c = 2.0 * h
        c *= np.clip(np.minimum(hm, am) / 1.0 + 0.35, 0.12, 1.0)
        chord += c
        mm = np.minimum(m, np.minimum(hm, am))
        upd = mm > margin
        margin = np.where(upd, mm, margin)
        side = np.where(upd & (mm > 0), np.int8(lung.side), side)
    return margin, chord, side


def line_integral(a: Anatomy, g: Grid) -> tuple[np.ndarray, dict]:
    """Attenuation line integral P (n x n) of the whole anatomy plus the lung fields used downstream."""
    n = g.n
    s = a.scale
    x, y = g.x, g.y
    P = np.zeros((n, n), np.float32)
    # torso: elliptic cross-sections whose half width grows from the neck to the shoulders, then tapers
    sh = a.shoulder_y
    blend = 1.0 / (1.0 + np.exp(-(y - sh) / (1.2 * s)))
    A = (5.5 * s) + (a.torso_a + 2.2 * s - 5.5 * s) * blend - 0.06 * np.maximum(y - sh, 0.0)
    C = (5.5 * s) + (a.torso_c - 5.5 * s) * blend
    P += (2.0 * MU_SOFT) * C * np.sqrt(np.maximum(1.0 - (x / A) ** 2, 0.0))
    # shoulders / deltoids and humeral heads
    for side in (-1, 1):
        add_ellipsoid(P, g, side * (a.torso_a + 1.5 * s), sh + 3.0 * s, 5.0 * s, 4.5 * s, 4.0 * s, MU_SOFT)
        hx = side * (a.torso_a + 2.5 * s)
        add_ellipsoid(P, g, hx, sh + 2.6 * s, 2.4 * s, 2.4 * s, 2.4 * s, MU_CORTEX * 0.35 * a.bone)
    # lungs replace soft tissue by aerated lung
    margin, lchord, side_map = lung_fields(a, g)
    P -= (MU_SOFT - MU_LUNG) * lchord
    # heart and aortic knob: blood is soft tissue, already counted by the torso; add a little for the
    # pericardial fat / density difference so the borders read as in a radiograph
    cx, cy, ha, hb, hc, ang = a.heart
    add_ellipsoid(P, g, cx, cy, ha, hb, hc, 0.012, angle=ang)
    # breasts
    if a.breasts > 0:
        for side in (-1, 1):
            add_ellipsoid(P, g, side * 9.0 * s, a.lungs[0].v_cp - 1.5 * s, 8.0 * s, 6.0 * s, a.breasts, MU_SOFT)
    # trachea and main bronchi (air)
    carina = (a.spine_x - 0.2, a.lungs[0].v_top + 6.5 * s)
    add_segment_tube(P, g, (a.spine_x - 0.3, -40.0), carina, 0.85 * s, -MU_SOFT)
    for side, ang_b in ((-1, 0.5), (1, 0.75)):
        end = (carina[0] + side * 3.6 * s * np.sin(ang_b), carina[1] + 3.6 * s * np.cos(ang_b))
        add_segment_tube(P, g, carina, end, 0.55 * s, -MU_SOFT)
    # hilar vessels (soft-tissue density inside the lung)
    for side in (-1, 1):
        lung = a.lungs[0 if side < 0 else 1]
        add_ellipsoid(P, g, side * (lung.u_m + 1.3 * s), carina[1] + 2.2 * s, 1.3 * s, 2.6 * s, 1.4 * s,
                      MU_SOFT - MU_LUNG)
    # gastric bubble under the left dome
    ll = a.lungs[1]
    add_ellipsoid(P, g, ll.dome_u + 0.5, ll.v_cp - ll.dome_h + 2.8 * s, 2.8 * s, 1.5 * s, 2.5 * s, -MU_SOFT)
    # spine: vertebral bodies (cortical shell, marrow) separated by discs, with pedicles
    _spine(P, a, g)
    # ribs and clavicles
    _ribs(P, a, g)
    for side in (-1, 1):
        y0 = a.lungs[0].v_top + 2.6 * s
        f = lambda u, y0=y0: y0 - 2.3 * s * (u - 1.5) / 14.0 + 0.55 * s * np.sin(2 * np.pi * (u - 1.5) / 14.0)  # noqa: E731
        add_curve_tube(P, g, 1.5 * s, 15.5 * s, f, side, 0.75 * s, 0.7 * s, MU_CORTEX * a.bone,
                       tz=lambda u: 0.25 + 0.0 * u, shell=0.7, inner_weight=MU_MARROW * a.bone)
    return P, dict(margin=margin, lung_chord=lchord, side=side_map)


def _spine(P: np.ndarray, a: Anatomy, g: Grid) -> None:
    s = a.scale
    rs = g.rows(-40, 40)
    w = 2.1 * s
    cs = g.cols(a.spine_x - w - 1.0, a.spine_x + w + 1.0)
    xx = g.x[:, cs] - a.spine_x
    yy = g.y[rs, :]
    widen = 1.0 + 0.012 * (yy + 10.0)
    half = w * widen
    q = np.maximum(1.0 - (xx / half) ** 2, 0.0)
    qi = np.maximum(1.0 - (xx / (half * 0.78)) ** 2, 0.0)
    period = 2.55 * s
    ph = np.mod(yy / period, 1.0)
    body = np.clip(np.sin(np.pi * ph) * 3.0, 0.0, 1.0)  # 0 at discs
    depth = 1.8 * s
    vert = (2 * depth) * (MU_CORTEX * 0.55 * np.sqrt(q) - (MU_CORTEX * 0.55 - MU_MARROW) * 0.78 * np.sqrt(qi))
    ped = np.exp(-((np.abs(xx) - 0.72 * half) / (0.32 * s)) ** 2 - ((ph - 0.35) / 0.16) ** 2)
    P[rs, cs] += (vert * body + 0.25 * ped) * a.bone


def _ribs(P: np.ndarray, a: Anatomy, g: Grid) -> None:
    s = a.scale
    for rib in a.ribs:
        side, k = rib["side"], rib["k"]
        lung = a.lungs[0 if side < 0 else 1]
        t = np.clip((rib["y"] + rib["drop"] - lung.v_top) / (lung.v_cp - lung.v_top), 0, 1)
        st = 1.0 - (1.0 - t) ** 2
        u_lat = lung.u_apex + (lung.u_cp - lung.u_apex) * st ** lung.lat_k + 0.9 * s
        if k == 0:
            u_lat = lung.u_apex + 0.55 * (u_lat - lung.u_apex)
        u0 = 1.3 * s
        yk, arch, drop, r = rib["y"], rib["arch"], rib["drop"], rib["r"]
        span = u_lat - u0
        fpost = lambda u, yk=yk, arch=arch, drop=drop, u0=u0, span=span: (  # noqa: E731
            yk - arch * np.sin(np.pi * 0.85 * (u - u0) / span) + drop * ((u - u0) / span) ** 2)
        tzp = lambda u, u0=u0, span=span: 0.9 * ((u - u0) / span) ** 6  # noqa: E731
        add_curve_tube(P, g, u0, u_lat, fpost, side, r, 0.45 * s, MU_CORTEX * a.bone, tz=tzp, shell=0.72,
                       inner_weight=MU_MARROW * a.bone)
        if k >= 8:
            continue
        y_l = fpost(np.float32(u_lat)) + 0.3 * s
        u_end = (3.2 + 0.35 * k) * s
        dy = rib["ant_drop"]
        aspan = u_lat - u_end
        fant = lambda u, y_l=y_l, dy=dy, u_lat=u_lat, aspan=aspan: (  # noqa: E731
            y_l + dy * np.clip((u_lat - u) / aspan, 0, 1) ** 0.75)
        tza = lambda u, u_lat=u_lat, aspan=aspan: 0.85 * np.clip(1 - (u_lat - u) / (0.25 * aspan), 0, 1)  # noqa: E731
        add_curve_tube(P, g, u_end, u_lat, fant, side, r * 1.25, 0.3 * s, MU_CORTEX * 0.75 * a.bone, tz=tza,
                       shell=0.65, inner_weight=MU_MARROW * a.bone)
