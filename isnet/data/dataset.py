"""Datasets and loaders over manifest records, with the decoded images cached after the first epoch."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.data import CacheDataset, Dataset
from torch.utils.data import DataLoader

from isnet.config.schema import DataConfig
from isnet.data.transforms import build_transforms

_KEEP = ("image", "mask", "label", "has_mask", "row", "site", "patient_id")


def build_dataset(records: list[dict], cfg: DataConfig, *, train: bool, progress: bool = False,
                  extra: Sequence = ()) -> Dataset:
    """``CacheDataset`` keeps load→normalise→resize results in memory; random augmentation runs each epoch.
    ``extra``: transforms inserted after resize (see ``build_transforms``)."""
    transform = build_transforms(cfg, train=train, extra=extra)
    if cfg.cache == "memory":
        return CacheDataset(records, transform=transform, cache_rate=1.0, num_workers=None,
                            progress=progress, copy_cache=False)
    return Dataset(records, transform=transform)


def _collate(batch: list[dict]) -> dict:
    out: dict = {}
    for k in _KEEP:
        vals = [b[k] for b in batch]
        if k in ("image", "mask"):
            out[k] = torch.stack([torch.as_tensor(v) for v in vals])
        elif k in ("label", "has_mask", "row"):
            out[k] = torch.as_tensor(vals, dtype=torch.long)
        else:
            out[k] = list(vals)
    return out


def build_loader(ds: Dataset, cfg: DataConfig, *, shuffle: bool, generator: torch.Generator | None = None,
                 batch_size: int | None = None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size or cfg.batch_size, shuffle=shuffle, generator=generator,
                      num_workers=cfg.num_workers, collate_fn=_collate, drop_last=False,
                      persistent_workers=cfg.num_workers > 0)
