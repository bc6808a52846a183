"""What every manifest builder shares: the registry, label mapping, relative paths and derived files.

A builder turns a public data set's folder layout into our manifest (``image, mask, label, site, patient_id,
split`` plus pass-through columns). Each maps the data set's labels to ours through a table documented in
``data_manifests/README.md``; labels mapped to ``None`` (classes we do not model) are skipped and counted,
never silently relabelled. Files a builder has to derive (merged Montgomery masks, grey-scale copies of
palette/RGB PNGs) go into a folder beside the output manifest (``<stem>_files/``); the originals are never
modified.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from PIL import Image

from isnet.errors import UserError
from isnet.files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
COLUMNS = ("image", "mask", "label", "site", "patient_id", "split")


@dataclass
class BuildResult:
    """The manifest rows plus what was left out and why (label → count), for the user to see."""

    frame: pd.DataFrame
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


@dataclass
class BuildContext:
    """Where the manifest goes (paths are written relative to its folder) and the user's label overrides."""

    root: Path
    out: Path
    label_map: dict[str, str | None]
    site: str | None = None
    mask_dir: Path | None = None

    @property
    def derived_dir(self) -> Path:
        return self.out.parent / f"{self.out.stem}_files"

    def rel(self, path: Path) -> str:
        """A path relative to the manifest's folder (absolute when no relative path exists)."""
        try:
            return Path(os.path.relpath(Path(path).resolve(), self.out.parent.resolve())).as_posix()
        except ValueError:  # different drives
            return str(Path(path).resolve())

    def map_label(self, raw: str, table: Mapping[str, str | None]) -> str | None:
        """User overrides first, then the builder's table; an unknown raw label is an error, not a guess."""
        if raw in self.label_map:
            return self.label_map[raw]
        if raw in table:
            return table[raw]
        raise UserError(f"{self.root}: label {raw!r} is not in this builder's table {sorted(table)}; "
                        f"map it with --label-map {raw}=CLASS (or {raw}= to skip it)")


Builder = Callable[[BuildContext], BuildResult]
BUILDERS: dict[str, Builder] = {}
DESCRIPTIONS: dict[str, str] = {}


def register(name: str, description: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        DESCRIPTIONS[name] = description
        return fn
    return deco


def parse_label_map(items: Iterable[str]) -> dict[str, str | None]:
    """``["Non-COVID=", "sick=tb"]`` → ``{"Non-COVID": None, "sick": "tb"}`` (empty value = skip)."""
    out: dict[str, str | None] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--label-map expects RAW=CLASS (empty CLASS skips the label), got {item!r}")
        raw, ours = item.split("=", 1)
        out[raw.strip()] = ours.strip() or None
    return out


def build_manifest(layout: str, root: str | Path, out: str | Path, *, label_map: Mapping[str, str | None] | None = None,
                   site: str | None = None, mask_dir: str | Path | None = None) -> BuildResult:
    """Build (but do not write) the manifest of ``root`` in ``layout``; derived files are written."""
    if layout not in BUILDERS:
        raise UserError(f"unknown layout {layout!r}; expected one of {sorted(BUILDERS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{layout}: data folder not found: {root}")
    if mask_dir is not None and not Path(mask_dir).is_dir():
        raise UserError(f"{layout}: mask folder not found: {mask_dir}")
    ctx = BuildContext(root=root, out=Path(out), label_map=dict(label_map or {}), site=site,
                       mask_dir=Path(mask_dir) if mask_dir is not None else None)
    result = BUILDERS[layout](ctx)
    if result.frame.empty:
        raise UserError(f"{layout}: no usable images found under {root}"
                        + (f" (skipped: {dict(result.skipped)})" if result.skipped else "")
                        + "; is this the right folder and layout?")
    frame = result.frame.copy()
    for c in COLUMNS:
        if c not in frame.columns:
            frame[c] = ""
    extras = [c for c in frame.columns if c not in COLUMNS]
    result.frame = frame[list(COLUMNS) + extras].fillna("").sort_values(["split", "label", "image"], kind="stable")
    result.frame = result.frame.reset_index(drop=True)
    return result


def write_manifest_csv(frame: pd.DataFrame, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``frame`` to ``out`` as CSV; atomically, so an interrupted build never leaves half a manifest."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        return []
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def grey_copy_if_needed(path: Path, ctx: BuildContext, subdir: str) -> Path:
    """Palette, RGB(A) or LA PNG/JPEG → a grey-scale PNG under the derived folder; grey files are used as they are.

    RGB radiographs are grey images stored in three equal channels; when the channels differ (an annotated
    screenshot, a colour overlay) the luminance is kept, as a viewer would show it.
    """
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        return path
    with Image.open(path) as img:
        if img.mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
            return path
        grey = img.convert("RGBA").convert("L") if img.mode == "P" and "transparency" in img.info else img.convert("L")
    target = ctx.derived_dir / subdir / (path.stem + ".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    grey.save(target)
    return target


def merge_masks(parts: list[Path], target: Path) -> Path:
    """Union of binary masks (e.g. left and right lung) written as one 0/255 PNG."""
    from isnet.data.io import read_mask

    arrays = [read_mask(p) for p in parts]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UserError(f"masks {[str(p) for p in parts]} have different sizes {sorted(shapes)}; cannot merge")
    merged = np.zeros(arrays[0].shape, np.uint8)
    for a in arrays:
        merged |= a.astype(np.uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(merged * np.uint8(255)).save(target)
    return target
