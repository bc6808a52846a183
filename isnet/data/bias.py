"""Synthetic background biases for the stress test (docs/design.md, section 6).

A bias is a visual token (geometric shape, text, bright patch, frame, noise texture) stamped into the
background of a resized image, never closer to the lungs than a margin: the pixels it may touch are those
outside the lung mask dilated by ``margin``. Every draw (size, intensity, position, whether the bias is
present) comes from a generator seeded by (seed, manifest row, bias index), so an image gets the same bias
in every epoch, every process and every test set, and the transform is deterministic — ``CacheDataset``
keeps its result with the other deterministic steps.

``InjectBiasd`` decides presence from a ``mode``:

- ``"train"``: present on images of the target class with probability ``strength``, absent on the others;
- ``"clean"``: never; ``"aligned"``: on every target-class image; ``"flipped"``: on every image of the
  other classes, never on the target; ``"all"``: on every image.

Placement is checked, not hoped for: a bias footprint that would touch the dilated lung mask is an
``AssertionError``, and an image with no room for it raises ``BiasPlacementError`` naming the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Literal, Mapping, Sequence

import numpy as np
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from isnet.errors import UserError

BIAS_KINDS = ("shape", "text", "patch", "border", "noise")
SHAPES = ("triangle", "square", "circle")
MODES = ("train", "clean", "aligned", "flipped", "all")


class BiasPlacementError(UserError):
    """No background position keeps the bias off the dilated lung mask."""


@dataclass(frozen=True)
class BiasSpec:
    """One synthetic bias. Sizes and margins are fractions of the image side; intensities lie in [0, 1]
    (the pipeline's range after percentile scaling). ``region`` = (top, left, bottom, right) fractions of
    the image that the bias must lie in."""

    kind: Literal["shape", "text", "patch", "border", "noise"] = "shape"
    shape: Literal["triangle", "square", "circle"] = "triangle"
    text: str = "PORTABLE"
    size: tuple[float, float] = (0.12, 0.18)
    intensity: tuple[float, float] = (0.9, 1.0)
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    margin: float = 0.03
    #: "bright": paint ``intensity``; "dark": paint 1 − intensity; "contrast": whichever stands out from
    #: the pixels it covers (dark on a bright background) — a bright token on the bright mediastinum or
    #: abdomen of a normalised radiograph is nearly invisible
    polarity: Literal["bright", "dark", "contrast"] = "contrast"
    #: border only. "clip": the frame is drawn wherever the image edge is background and left out where the
    #: dilated lungs reach the edge (cropped radiographs, and two in three of our 64 px stress phantoms, have
    #: lungs at the edge); "full": the whole frame or nothing (narrowed to 1 px if it would touch the lungs,
    #: else an error)
    frame: Literal["clip", "full"] = "clip"

    def __post_init__(self) -> None:
        if self.kind not in BIAS_KINDS:
            raise ValueError(f"unknown bias kind {self.kind!r}; choose one of {', '.join(BIAS_KINDS)}")
        if self.kind == "shape" and self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; choose one of {', '.join(SHAPES)}")
        if self.kind == "text" and not self.text.strip():
            raise ValueError("a text bias needs a non-empty text")
        lo, hi = self.size
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"size range {self.size} must satisfy 0 < low <= high <= 1")
        lo, hi = self.intensity
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"intensity range {self.intensity} must satisfy 0 <= low <= high <= 1")
        top, left, bottom, right = self.region
        if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
            raise ValueError(f"region {self.region} must be (top, left, bottom, right) fractions with top < bottom, "
                             f"left < right")
        if self.polarity not in ("bright", "dark", "contrast"):
            raise ValueError(f"polarity {self.polarity!r} must be bright, dark or contrast")
        if not 0 <= self.margin < 0.5:
            raise ValueError(f"margin {self.margin} must be in [0, 0.5)")
        if self.frame not in ("clip", "full"):
            raise ValueError(f"frame {self.frame!r} must be clip or full")

    @property
    def label(self) -> str:
        if self.kind == "shape":
            return f"shape:{self.shape}"
        if self.kind == "text":
            return f"text:{self.text}"
        return self.kind


def parse_bias(text: str) -> BiasSpec:
    """``shape:triangle``, ``text:PORTABLE``, ``patch``, ``border``, ``noise`` → a ``BiasSpec``
    (ranges at their defaults; a YAML config sets them)."""
    kind, _, arg = text.partition(":")
    kind, arg = kind.strip().lower(), arg.strip().strip('"').strip("'")
    try:
        if kind == "shape":
            return BiasSpec(kind="shape", shape=(arg or "triangle").lower())
        if kind == "text":
            if not arg:
                raise ValueError("text needs the token to render, e.g. text:PORTABLE")
            return BiasSpec(kind="text", text=arg)
        if kind in ("patch", "border", "noise"):
            if arg:
                raise ValueError(f"{kind} takes no argument")
            return BiasSpec(kind=kind)
        raise ValueError(f"unknown bias kind {kind!r}; choose one of shape:triangle|square|circle, text:TOKEN, "
                         f"patch, border, noise")
    except ValueError as exc:
        raise UserError(f"bad --bias {text!r}: {exc}") from None


# -- footprints --------------------------------------------------------------------------------------
def _shape_footprint(shape: str, s: int) -> np.ndarray:
    s = max(s, 3)
    if shape == "square":
        return np.ones((s, s), bool)
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    if shape == "circle":
        c = s / 2
        return (yy - c) ** 2 + (xx - c) ** 2 <= c * c
    # triangle pointing up: apex at the top centre, base on the bottom row
    half = xx - s / 2
    return np.abs(half) <= yy / 2


_FONTS: dict[int, ImageFont.ImageFont] = {}


def _font(px: int):
    if px not in _FONTS:
        try:
            _FONTS[px] = ImageFont.load_default(size=px)  # Pillow's bundled FreeType font; no download
        except TypeError:  # Pillow < 10.1: bitmap font, one size
            _FONTS[px] = ImageFont.load_default()
    return _FONTS[px]


def _text_footprint(text: str, height: int) -> np.ndarray:
    font = _font(max(height, 6))
    left, top, right, bottom = font.getbbox(text)
    w, h = max(right - left, 1), max(bottom - top, 1)
    canvas = Image.new("L", (w + 2, h + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, fill=255, font=font)
    fp = np.asarray(canvas) > 127
    ys, xs = np.nonzero(fp)
    if not len(ys):
        raise ValueError(f"text {text!r} renders no pixels at height {height}")
    return fp[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def _footprint(spec: BiasSpec, side: int, size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(boolean footprint, pixel values inside it as a float array of the same shape)."""
    s = max(3, int(round(size * side)))
    intensity = float(rng.uniform(*spec.intensity))
    if spec.kind == "shape":
        fp = _shape_footprint(spec.shape, s)
        return fp, np.full(fp.shape, intensity, np.float32)
    if spec.kind == "text":
        fp = _text_footprint(spec.text, max(6, s // 2))
        return fp, np.full(fp.shape, intensity, np.float32)
    if spec.kind == "patch":
        h = max(3, int(round(s * rng.uniform(0.6, 1.0))))
        fp = np.ones((h, s), bool)
        return fp, np.full(fp.shape, intensity, np.float32)
    if spec.kind == "noise":
        fp = np.ones((s, s), bool)
        return fp, (rng.random((s, s)) < 0.5).astype(np.float32) * intensity
    raise AssertionError(spec.kind)


# -- placement ---------------------------------------------------------------------------------------
def forbidden_zone(mask: np.ndarray, margin_px: int) -> np.ndarray:
    """The lung mask dilated by ``margin_px`` pixels (Euclidean): where no bias pixel may go."""
    lungs = mask > 0.5
    if margin_px <= 0 or not lungs.any():
        return lungs
    return ndimage.distance_transform_edt(~lungs) <= margin_px


def _free_positions(blocked: np.ndarray, fh: int, fw: int, region: tuple[float, float, float, float]) -> np.ndarray:
    """Top-left corners (y, x) where an fh×fw box lies in ``region`` and covers no blocked pixel."""
    H, W = blocked.shape
    top, left, bottom, right = region
    y0, x0 = int(np.floor(top * H)), int(np.floor(left * W))
    y1, x1 = int(np.ceil(bottom * H)) - fh, int(np.ceil(right * W)) - fw
    if y1 < y0 or x1 < x0:
        return np.zeros((0, 2), int)
    ii = np.pad(blocked.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    box = ii[fh:, fw:] - ii[:-fh, fw:] - ii[fh:, :-fw] + ii[:-fh, :-fw]  # box sums for every top-left
    ok = box[y0:y1 + 1, x0:x1 + 1] == 0
    ys, xs = np.nonzero(ok)
    return np.stack([ys + y0, xs + x0], 1)


def _frame(shape: tuple[int, int], width: int) -> np.ndarray:
    """The outermost ``width`` pixels of every edge."""
    where = np.zeros(shape, bool)
    where[:width], where[-width:], where[:, :width], where[:, -width:] = True, True, True, True
    return where


def stamp_bias(image: np.ndarray, blocked: np.ndarray, spec: BiasSpec, rng: np.random.Generator,
               name: str = "image") -> np.ndarray:
    """Draw one bias into ``image`` (H×W, modified in place) outside ``blocked``; returns its footprint."""
    H, W = image.shape
    side = min(H, W)
    where = np.zeros((H, W), bool)
    if spec.kind == "border":
        width = max(1, int(round(rng.uniform(*spec.size) * side * 0.25)))
        where = _frame((H, W), width)
        value = float(rng.uniform(*spec.intensity))
        if spec.frame == "clip":
            kept = where & ~blocked
            if kept.sum() < 0.5 * where.sum():  # a few corner pixels are not a frame
                raise BiasPlacementError(f"{name}: no room for a border bias — the lung mask dilated by "
                                         f"{spec.margin:g}×side covers {1 - kept.sum() / where.sum():.0%} of the "
                                         f"{width}-px frame (a clipped frame keeps at least half)")
            where = kept
        elif (where & blocked).any():
            where = _frame((H, W), 1)
            if (where & blocked).any():
                raise BiasPlacementError(f"{name}: no room for a border bias — the lung mask dilated by "
                                         f"{spec.margin:g}×side reaches the image edge; frame: clip draws the "
                                         f"frame where the edge is background")
        image[where] = _polarised(np.full(int(where.sum()), value, np.float32), image[where], spec.polarity)
        return where
    tried = []
    for size in (float(rng.uniform(*spec.size)), spec.size[0], spec.size[0] / 2):
        fp, values = _footprint(spec, side, size, rng)
        fh, fw = fp.shape
        tried.append(f"{fh}x{fw}")
        if fh > H or fw > W:
            continue
        pos = _free_positions(blocked, fh, fw, spec.region)
        if len(pos):
            y, x = pos[rng.integers(len(pos))]
            where[y:y + fh, x:x + fw] = fp
            patch = image[y:y + fh, x:x + fw]
            patch[fp] = _polarised(values[fp], patch[fp], spec.polarity)
            return where
    raise BiasPlacementError(f"{name}: no background position fits the {spec.label} bias (tried footprints "
                             f"{', '.join(tried)} px in region {spec.region}) outside the lung mask dilated by "
                             f"{spec.margin:g}×side; use smaller bias sizes, a smaller margin or a wider region")


def _polarised(values: np.ndarray, covered: np.ndarray, polarity: str) -> np.ndarray:
    if polarity == "dark" or (polarity == "contrast" and float(covered.mean()) > 0.5):
        return 1.0 - values
    return values


def inject(image: np.ndarray, mask: np.ndarray, specs: Sequence[BiasSpec], seed: int, row: int,
           name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Stamp every bias of ``specs`` into a copy of ``image`` (H×W): deterministic per (seed, row), biases
    never overlapping each other nor the lung mask dilated by their margin. Returns (image, footprint)."""
    out = np.array(image, dtype=np.float32, copy=True)
    H, W = out.shape
    lungs = np.asarray(mask) > 0.5
    if not lungs.any():
        raise BiasPlacementError(f"{name}: the lung mask is empty, so the background is unknown; the stress "
                                 f"test needs a lung mask for every image")
    total = np.zeros((H, W), bool)
    for i, spec in enumerate(specs):
        zone = forbidden_zone(lungs, int(round(spec.margin * min(H, W))))
        rng = np.random.default_rng([int(seed), int(row), i, 0xB1A5])
        where = stamp_bias(out, zone | total, spec, rng, name)
        assert not (where & zone).any(), f"{name}: bias {spec.label} touches the dilated lung mask"
        total |= where
    return out, total


def bias_present(mode: str, label: int, target: int, strength: float, seed: int, row: int) -> bool:
    """Whether an image carries the bias under ``mode`` (see the module docstring)."""
    if mode == "clean":
        return False
    if mode == "all":
        return True
    if mode == "aligned":
        return label == target
    if mode == "flipped":
        return label != target
    if mode == "train":
        if label != target:
            return False
        u = np.random.default_rng([int(seed), int(row), 0x5EED]).random()
        return bool(u < strength)
    raise ValueError(f"unknown bias mode {mode!r}; one of {MODES}")


class InjectBiasd(MapTransform):
    """MONAI dictionary transform: stamps the biases into ``d['image']`` ([1, H, W], after resize) when
    ``mode`` says so; adds ``bias_present`` (0/1) and ``bias_region`` ([1, H, W] bool footprint).
    ``names`` (manifest row → image path) lets a placement error name the file."""

    def __init__(self, specs: Sequence[BiasSpec], target: int, mode: str = "train", strength: float = 1.0,
                 seed: int = 0, names: Mapping[int, str] | None = None, image_key: str = "image",
                 mask_key: str = "mask"):
        super().__init__(keys=[image_key])
        if mode not in MODES:
            raise ValueError(f"unknown bias mode {mode!r}; one of {MODES}")
        if not 0 <= strength <= 1:
            raise ValueError(f"strength {strength} must be in [0, 1]")
        if not specs:
            raise ValueError("InjectBiasd needs at least one bias")
        self.specs, self.target, self.mode = tuple(specs), int(target), mode
        self.strength, self.seed = float(strength), int(seed)
        self.names = dict(names or {})
        self.image_key, self.mask_key = image_key, mask_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        img = np.asarray(d[self.image_key], dtype=np.float32)
        row = int(d.get("row", 0))
        present = bias_present(self.mode, int(d["label"]), self.target, self.strength, self.seed, row)
        region = np.zeros(img.shape, bool)
        if present:
            name = f"{self.names.get(row, 'image')} (manifest row {row})"
            mask = np.asarray(d[self.mask_key])[0]
            new, where = inject(img[0], mask, self.specs, self.seed, row, name=name)
            img = img.copy()
            img[0] = new
            region[0] = where
            d[self.image_key] = convert_to_dst_type(img, d[self.image_key])[0]  # same container and dtype
        d["bias_present"] = int(present)
        d["bias_region"] = region
        return d
