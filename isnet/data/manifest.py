"""The manifest: one row per radiograph (image, mask, label, site, patient_id, split, extras).

Validation reports every problem at once, each with the manifest's file name, the row as a spreadsheet
shows it (the header is row 1) and what is wrong, so that a user fixes a whole data set in one pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from isnet.data import io
from isnet.data.dicom import DicomError
from isnet.data.splits import SPLITS, assign_splits
from isnet.errors import ManifestError

REQUIRED_COLUMNS = ("image", "label")
KNOWN_COLUMNS = ("image", "mask", "label", "site", "patient_id", "split")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: str | Path, required: Iterable[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Read a CSV or Parquet manifest; adds ``row`` (spreadsheet row number) and absolute paths.
    ``required``: the columns that must be there (prediction needs only ``image``; a missing ``label``
    column then reads as empty labels)."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest not found: {p}")
    parquet = p.suffix.lower() in (".parquet", ".pq")
    if not parquet:
        _check_csv_shape(p)
    try:
        if parquet:
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, dtype=str, keep_default_na=False, index_col=False)
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {p} cannot be read: it is not UTF-8 text (save it as 'CSV UTF-8')") from None
    except Exception as exc:  # pandas raises many kinds for a malformed file
        raise ManifestError(f"manifest {p} cannot be read: {_short(exc)}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest {p} lacks required column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ManifestError(f"manifest {p} has no rows")
    df = df.copy()
    for c in KNOWN_COLUMNS:
        if c not in df.columns:
            df[c] = ""
        df[c] = df[c].fillna("").astype(str).str.strip()
    df["split"] = df["split"].str.lower()
    df["row"] = range(2, len(df) + 2)
    base = p.resolve().parent
    df["image_path"] = [_resolve(base, v) for v in df["image"]]
    df["mask_path"] = [_resolve(base, v) if v else "" for v in df["mask"]]
    if (df["site"] == "").any():
        df.loc[df["site"] == "", "site"] = "unknown"
    return df


def _check_csv_shape(p: Path) -> None:
    """Rows with more cells than the header (an unquoted comma in a cell): pandas would shift their cells
    into the wrong columns, or use the first column as an index. Every such row is named at once."""
    import csv

    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            records = csv.reader(f)
            header = next(records, None)
            if header is None:
                return
            twice = sorted({c.strip() for c in header if c.strip() in KNOWN_COLUMNS
                            and [h.strip() for h in header].count(c.strip()) > 1})
            if twice:
                raise ManifestError(f"manifest {p}: column(s) {twice} appear more than once in the header; "
                                    f"keep one of each")
            long = [(i + 2, len(r)) for i, r in enumerate(records) if len(r) > len(header)]
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {p} cannot be read: it is not UTF-8 text (save it as 'CSV UTF-8')") from None
    except (csv.Error, OSError) as exc:
        raise ManifestError(f"manifest {p} cannot be read: {_short(exc)}") from None
    if long:
        raise ManifestError(f"manifest {p} has rows with more cells than its header ({len(header)} columns); quote "
                            f"cells that contain a comma:", [f"{p.name}: row {r}: {n} cells" for r, n in long])


def _resolve(base: Path, value: str) -> str:
    try:
        q = Path(value).expanduser()
    except RuntimeError:  # '~name' of no known user: a relative path like any other (reported as not found)
        q = Path(value)
    return str(q if q.is_absolute() else base / q)


@dataclass
class ValidationReport:
    manifest: Path
    problems: list[str] = field(default_factory=list)

    def add(self, row: int | None, what: str) -> None:
        where = f"row {row}: " if row is not None else ""
        self.problems.append(f"{self.manifest.name}: {where}{what}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ManifestError(f"manifest {self.manifest} has {len(self.problems)} problem(s):", self.problems)


def validate_manifest(df: pd.DataFrame, manifest: str | Path, classes: Iterable[str], *,
                      require_masks: bool = False, check_files: bool = True) -> ValidationReport:
    """Check schema, labels, splits, patient leakage, files, masks and duplicates; collect all problems."""
    report = ValidationReport(Path(manifest))
    classes = list(classes)
    bad_labels = df[~df["label"].isin(classes)]
    for r, lab in zip(bad_labels["row"], bad_labels["label"]):
        shown = repr(lab) if lab else "empty"
        report.add(r, f"unknown label {shown}; expected one of {classes}")
    bad_split = df[~df["split"].isin(("",) + SPLITS)]
    for r, s in zip(bad_split["row"], bad_split["split"]):
        report.add(r, f"unknown split {s!r}; expected train, val, test or empty")
    _check_patient_leakage(df, report)
    _check_split_classes(df, report, classes)
    dup = df[df["image_path"].duplicated(keep=False)]
    for path, group in dup.groupby("image_path", sort=False):
        cells = list(dict.fromkeys(group["image"]))
        shown = ", ".join(repr(c) for c in cells)
        same = "" if cells == [path] else f" ({path})"
        report.add(None, f"image {shown}{same} is listed in several rows {list(group['row'])}")
    if check_files:
        _check_files(df, report, require_masks)
    elif require_masks:
        for r in df.loc[df["mask"] == "", "row"]:
            report.add(r, "mask cell is empty but this run needs lung masks")
    return report


def summarize(df: pd.DataFrame) -> str:
    """Counts a user checks before training: images per site x class and split x class (with totals),
    lung masks present, distinct patients."""
    def table(index: str) -> str:
        t = pd.crosstab(df[index].replace("", "(auto)"), df["label"].replace("", "(none)"),
                        margins=True, margins_name="total")
        t.index.name, t.columns.name = index, None
        return t.to_string()
    from isnet.tracking_names import site_keys

    masks = int((df["mask"] != "").sum())
    patients = df.loc[df["patient_id"] != "", "patient_id"].nunique()
    escaped = {s: k for s, k in site_keys(df["site"]).items() if s != k}
    note = ("\nsite names that MLflow metric names cannot hold are recorded under a key (the run keeps the "
            "mapping in data/site_keys.json): " + ", ".join(f"{s!r} → {k}" for s, k in escaped.items())
            if escaped else "")
    return (f"{len(df)} images, {patients} patient ids, {masks} with a lung mask ({len(df) - masks} without)\n"
            f"per site and class:\n{table('site')}\nper split and class:\n{table('split')}{note}")


def _check_patient_leakage(df: pd.DataFrame, report: ValidationReport) -> None:
    named = df[(df["patient_id"] != "") & (df["split"] != "")]
    for pid, group in named.groupby("patient_id"):
        splits = sorted(set(group["split"]))
        if len(splits) > 1:
            report.add(None, f"patient {pid!r} appears in splits {splits} (rows {list(group['row'])}): "
                             "one patient must stay in one split")


def _check_split_classes(df: pd.DataFrame, report: ValidationReport, classes: list[str]) -> None:
    """With explicit splits (no empty split cell), every split must see every class the manifest has:
    a class missing from val or test cannot be measured there, one missing from train cannot be learnt."""
    if (df["split"] == "").any():
        return
    present = [c for c in classes if (df["label"] == c).any()]
    for split in SPLITS:
        labels = set(df.loc[df["split"] == split, "label"])
        if not labels:
            continue
        missing = [c for c in present if c not in labels]
        if missing:
            report.add(None, f"split {split!r} has no image of class(es) {missing} "
                             f"(other splits have them); move some rows or leave the split column empty")


def _check_files(df: pd.DataFrame, report: ValidationReport, require_masks: bool) -> None:
    hashes: dict[str, int] = {}
    for row in df.itertuples(index=False):
        img = Path(row.image_path)
        shape = None
        if not row.image:
            report.add(row.row, "image cell is empty")
        elif img.is_dir():
            report.add(row.row, f"image {row.image!r} is a folder, not a file ({img})")
        elif not img.is_file():
            report.add(row.row, f"image file not found: {row.image!r} (looked at {img})")
        else:
            try:
                pixels = io.decode_image(img)
                shape = pixels.shape
                blank = _blank_image(pixels)
                if blank:
                    report.add(row.row, f"image {row.image!r} {blank}")
            except io.NotAnImageError as exc:
                report.add(row.row, f"image {row.image!r} is {_short(exc)}")
            except DicomError as exc:
                why = _short(exc, 400).replace(str(img) + ": ", "")
                report.add(row.row, f"DICOM image {row.image!r} cannot be used: {why}")
            except Exception as exc:
                report.add(row.row, f"image {row.image!r} cannot be read: {_short(exc)}")
            else:
                digest = sha256_file(img)
                if digest in hashes:
                    report.add(row.row, f"image {row.image!r} has the same content as the image in row "
                                        f"{hashes[digest]}")
                else:
                    hashes[digest] = row.row
        if not row.mask:
            if require_masks:
                report.add(row.row, f"mask cell is empty for image {row.image!r} but this run needs lung masks")
            continue
        mpath = Path(row.mask_path)
        if mpath.is_dir():
            report.add(row.row, f"mask {row.mask!r} is a folder, not a file ({mpath})")
            continue
        if not mpath.is_file():
            report.add(row.row, f"mask file not found: {row.mask!r} (looked at {mpath})")
            continue
        try:
            mask = io.read_mask(mpath)
        except Exception as exc:
            report.add(row.row, f"mask {row.mask!r} cannot be read: {_short(exc)}")
            continue
        if shape is not None and tuple(mask.shape) != tuple(shape):
            report.add(row.row, f"mask {row.mask!r} is {mask.shape[1]}x{mask.shape[0]} but image {row.image!r} "
                                f"is {shape[1]}x{shape[0]} (width x height)")
        if mask.sum() == 0:
            report.add(row.row, f"mask {row.mask!r} is empty (no lung pixels)")
        elif mask.all():
            report.add(row.row, f"mask {row.mask!r} covers the whole image (all ones)")


def _blank_image(pixels) -> str | None:
    """Why an image that decodes holds no picture (None when it does): every pixel the same value (the
    percentile scaling would divide by zero and the network would see zeros) or non-finite values."""
    import numpy as np

    if pixels.size == 0:
        return "has no pixels"
    finite = np.isfinite(pixels)
    if not finite.all():
        return f"has {int((~finite).sum())} non-finite pixel value(s) (NaN or infinity)"
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo == hi:
        return f"is constant (every pixel is {lo:g}): it holds no picture, and intensity scaling would divide by zero"
    return None


def _short(exc: Exception, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit]


@dataclass
class Manifest:
    """A validated manifest with every row's split decided."""

    path: Path
    frame: pd.DataFrame
    classes: list[str]
    sha256: str

    def rows(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split]

    def records(self, split: str) -> list[dict]:
        """Dictionaries for the MONAI pipeline: file paths, the class index and what reports need."""
        return records_of(self.rows(split), self.classes)

    def counts(self) -> pd.DataFrame:
        return self.frame.groupby(["split", "label"]).size().unstack(fill_value=0)


def records_of(df: pd.DataFrame, classes: Sequence[str], *, unlabelled: int | None = None) -> list[dict]:
    """The records of the MONAI pipeline for validated manifest rows: file paths, the class index, the manifest
    row, site and patient (a row without a patient id is its own patient). Rows with an empty label get
    ``unlabelled`` (predict and explain accept them); every other label must be one of ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for r in df.itertuples(index=False):
        label = unlabelled if (unlabelled is not None and not r.label) else index[r.label]
        out.append({"image": r.image_path, "mask": r.mask_path, "label": label, "row": int(r.row),
                    "site": r.site, "patient_id": r.patient_id or f"row{int(r.row)}"})
    return out


def load_manifest(path: str | Path, classes: Iterable[str], *, require_masks: bool = False,
                  check_files: bool = True, split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  split_seed: int = 0, need_splits: Iterable[str] = ("train", "val")) -> Manifest:
    """Read, validate (raising one error listing every problem) and complete the splits of a manifest."""
    p = Path(path)
    classes = list(classes)
    df = read_manifest(p)
    validate_manifest(df, p, classes, require_masks=require_masks, check_files=check_files).raise_if_any()
    df = assign_splits(df, split_fractions, split_seed)
    present = set(df["split"])
    missing = [s for s in need_splits if s not in present]
    if missing:
        raise ManifestError(f"manifest {p}: no rows in split(s) {missing} after assignment; "
                            f"add rows or leave the split column empty for automatic assignment")
    return Manifest(path=p, frame=df, classes=classes, sha256=sha256_file(p))
