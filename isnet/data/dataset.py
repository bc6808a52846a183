"""Datasets and loaders over manifest records, with the deterministic part of the pipeline cached.

``data.cache`` chooses where the result of load → percentile scaling → crop → resize/pad is kept
(:func:`isnet.data.transforms.cache_transforms`, stored in ``data.cache_dtype``):

- ``memory``: MONAI's ``CacheDataset`` fills it before training (``data.cache_rate`` / ``data.cache_max_gb``:
  only a part; the rest is decoded on every access);
- ``disk``: MONAI's ``PersistentDataset`` (:class:`DiskCache`) writes one file per image during the first epoch
  into ``data.cache_dir/<key>``, where the key is a hash of the settings that change the cached arrays
  (:data:`isnet.data.transforms.CACHE_KEY_FIELDS`, the cache format and MONAI's version); each file is named by a
  hash of the image's and mask's absolute path, size and modification time, so a later run, or another run
  at the same time, reads it instead of decoding, and an edited image is decoded again;
- ``none``: every access decodes (float32 throughout, no cache dtype rounding).

Every dataset is an :class:`XrayDataset`: the cache layer, then the per-access transforms (back to float32,
augmentation, masking, intensity convention) whose random state the trainer seeds per epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Sequence

import monai
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from torch.utils.data import DataLoader
from tqdm import tqdm

from isnet.config.schema import DataConfig
from isnet.files import atomic_write
from isnet.data.transforms import (
    CACHE_FORMAT,
    CACHE_KEY_FIELDS,
    after_cache_transforms,
    build_transforms,
    cache_transforms,
)

_KEEP = ("image", "mask", "label", "has_mask", "row", "site", "patient_id")
#: keys added by the stress test's bias injection, batched when present
_OPTIONAL = ("bias_region", "bias_present")
_STACKED = ("image", "mask", "bias_region")
_INTEGER = ("label", "has_mask", "row", "bias_present")
#: what a disk cache file holds; the other keys come from the current record (label, row, site, ...)
_DISK_KEYS = ("image", "mask", "has_mask")


# -- the disk cache ----------------------------------------------------------------------------------
def cache_key(cfg: DataConfig) -> dict:
    """Everything the cached arrays depend on besides the files themselves."""
    return {"format": CACHE_FORMAT, "monai": monai.__version__, **{f: getattr(cfg, f) for f in CACHE_KEY_FIELDS}}


def disk_cache_folder(cfg: DataConfig) -> Path:
    """``data.cache_dir`` (resolved against the working directory) / ``<size>px-<hash of cache_key>``."""
    digest = hashlib.sha256(json.dumps(cache_key(cfg), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir).expanduser().resolve() / f"{cfg.image_size}px-{digest}"


def _identity(path: str) -> list:
    p = os.path.abspath(path)
    st = os.stat(p)
    return [p, st.st_size, st.st_mtime_ns]


def file_identity_hash(record: dict) -> bytes:
    """The key of one record in a disk cache: absolute path, size and mtime (ns) of its image and mask."""
    mask = record.get("mask") or ""
    ident = {"image": _identity(str(record["image"])), "mask": _identity(str(mask)) if mask else None}
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest().encode()


class MemoryCache(CacheDataset):
    """MONAI's ``CacheDataset`` whose cache fill waits for its threads when an image fails.

    MONAI fills the cache in a thread pool and, when one image's transform raises, only terminates the pool: the
    threads still decoding other images keep running while the error travels up. When the error ends the
    process (a bad manifest row is a one-line exit 2), the interpreter shuts down under those threads and the
    C++ runtime aborts it ("terminate called without an active exception", exit 134) instead of exiting with
    the error's code. Here the pool is terminated and joined, so only the images already in flight finish.
    """

    def _fill_cache(self, indices=None) -> list:
        if self.cache_num <= 0:
            return []
        if indices is None:
            indices = list(range(self.cache_num))
        pool = ThreadPool(self.num_workers)
        try:
            items = pool.imap(self._load_cache_item, indices)
            if self.progress:
                items = tqdm(items, total=len(indices), desc="Loading dataset")
            return list(items)
        finally:
            pool.terminate()
            pool.join()


class DiskCache(PersistentDataset):
    """MONAI's ``PersistentDataset`` with two changes to its ``_cachecheck``:

    - the file name is :func:`file_identity_hash` of the record (not a hash of the whole record), and the file
      keeps only image, mask and ``has_mask``; the rest comes from the current record, so a manifest that
      renumbers rows or relabels images reuses the decoded pixels;
    - files are written to a temporary name in the cache folder itself and renamed (``os.replace``), which is
      atomic on every POSIX file system. MONAI writes into the system temporary folder and moves the file; when
      that folder is on another file system the move is a copy, and a second run sharing the cache could read
      a half-copied file. A file that cannot be read is decoded again and rewritten, with a warning.
    """

    def __init__(self, records: Sequence[dict], transform, folder: Path):
        super().__init__(list(records), transform=transform, cache_dir=folder, hash_func=file_identity_hash)
        self._write_failed = False

    def cache_file(self, record: dict) -> Path:
        return self.cache_dir / f"{self.hash_func(record).decode()}.pt"

    def _cachecheck(self, item_transformed):
        path = self.cache_file(item_transformed)
        cached = None
        if path.is_file():
            try:
                cached = torch.load(path, weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is decoded again
                warnings.warn(f"disk cache file {path} is unreadable ({type(exc).__name__}); decoding the image again")
        if cached is None:
            out = self._pre_transform(dict(item_transformed))
            cached = {k: out[k] for k in _DISK_KEYS if k in out}
            try:
                atomic_write(path, lambda tmp: torch.save(cached, tmp))
            except OSError as exc:
                if not self._write_failed:
                    warnings.warn(f"cannot write to the disk cache {self.cache_dir} ({exc}); images are decoded "
                                  f"every epoch")
                self._write_failed = True
        return {**item_transformed, **cached}


def _write_key_file(folder: Path, cfg: DataConfig) -> None:
    """``key.json`` in a disk cache folder: the settings its files were made with (for people; not read)."""
    path = folder / "key.json"
    if not path.is_file():
        text = json.dumps(cache_key(cfg), indent=1, sort_keys=True)
        try:
            atomic_write(path, lambda tmp: tmp.write_text(text))
        except OSError:
            pass


# -- the memory cache --------------------------------------------------------------------------------
def cached_nbytes(item: dict) -> int:
    """Bytes of the arrays of one cached item."""
    return sum(int(v.nbytes) for v in item.values() if hasattr(v, "nbytes"))


def memory_cache_rate(cfg: DataConfig, sample: dict, n_items: int, extra: Sequence = ()) -> float:
    """``data.cache_rate``, lowered so that ``n_items`` cached images fit in ``data.cache_max_gb`` GiB, from the
    measured size of ``sample`` once cached (every cached image has the same shape)."""
    if cfg.cache_max_gb is None or n_items == 0:
        return cfg.cache_rate
    size = cached_nbytes(cache_transforms(cfg, extra)(dict(sample)))
    return min(cfg.cache_rate, cfg.cache_max_gb * 2**30 / (max(size, 1) * n_items))


# -- datasets ----------------------------------------------------------------------------------------
class XrayDataset(Dataset):
    """Records → the cache layer (``data.cache``) → the per-access transforms (``self.transform``)."""

    def __init__(self, cache_layer: Sequence, transform, *, mode: str, folder: Path | None = None):
        super().__init__(cache_layer, transform)
        self.mode = mode
        #: data.cache=disk: the folder this data set's files are in
        self.folder = folder

    @property
    def records(self) -> list[dict]:
        return list(self.data if self.mode == "none" else self.data.data)

    def cached_count(self) -> int:
        """Images whose cached form is kept: in memory now, or on disk already (a look at every file)."""
        if self.mode == "memory":
            return int(self.data.cache_num)
        if self.mode == "disk":
            return sum(1 for r in self.data.data if self.data.cache_file(r).is_file())
        return 0


def build_dataset(records: list[dict], cfg: DataConfig, *, train: bool, progress: bool = False,
                  extra: Sequence = (), cache_rate: float | None = None) -> XrayDataset:
    """The data set of ``records`` with ``cfg``'s pipeline and cache; random augmentation when ``train``.

    ``extra``: transforms inserted after resize (see ``build_transforms``): kept in the memory cache, applied
    after the disk cache (their settings are not part of its key). ``cache_rate`` (memory) overrides the rate
    the config gives (the trainer shares one ``data.cache_max_gb`` budget between splits); ``progress``: a
    progress bar while the memory cache fills (images/s as ``it/s``)."""
    if cfg.cache == "none":
        return XrayDataset(list(records), build_transforms(cfg, train=train, extra=extra), mode="none")
    if cfg.cache == "memory":
        if cache_rate is None:
            cache_rate = memory_cache_rate(cfg, records[0], len(records), extra) if records else cfg.cache_rate
        layer = MemoryCache(list(records), transform=cache_transforms(cfg, extra), cache_rate=cache_rate,
                            num_workers=None, progress=progress, copy_cache=False)
        return XrayDataset(layer, after_cache_transforms(cfg, train), mode="memory")
    folder = disk_cache_folder(cfg)
    layer = DiskCache(records, cache_transforms(cfg), folder)
    _write_key_file(folder, cfg)
    return XrayDataset(layer, after_cache_transforms(cfg, train, extra), mode="disk", folder=folder)


def _collate(batch: list[dict]) -> dict:
    out: dict = {}
    for k in _KEEP + tuple(k for k in _OPTIONAL if k in batch[0]):
        vals = [b[k] for b in batch]
        if k in _STACKED:
            out[k] = torch.stack([torch.as_tensor(v) for v in vals])
        elif k in _INTEGER:
            out[k] = torch.as_tensor([int(v) for v in vals], dtype=torch.long)
        else:
            out[k] = list(vals)
    return out


def build_loader(ds: Dataset, cfg: DataConfig, *, shuffle: bool, generator: torch.Generator | None = None,
                 batch_size: int | None = None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size or cfg.batch_size, shuffle=shuffle, generator=generator,
                      num_workers=cfg.num_workers, collate_fn=_collate, drop_last=False,
                      persistent_workers=cfg.num_workers > 0)


def eval_loader(records: list[dict], cfg: DataConfig, *, batch_size: int | None = None,
                extra: Sequence = ()) -> DataLoader:
    """The one way to score or explain a list of records with a run's data settings: the evaluation pipeline
    (no augmentation, nothing cached, in record order). Used by explain, predict, the report, the stress
    test and the trainer's test split alike, so that they all see the same float32 images."""
    data_cfg = cfg.model_copy(update={"cache": "none"})
    return build_loader(build_dataset(records, data_cfg, train=False, extra=extra), data_cfg, shuffle=False,
                        batch_size=batch_size)
