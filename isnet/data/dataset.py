"""Datasets and loaders over manifest records, with the decoded images cached after the first epoch."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.data import CacheDataset, Dataset
from torch.utils.data import DataLoader

from isnet.config.schema import DataConfig
from isnet.data.transforms import build_transforms

_KEEP = ("image", "mask", "label", "has_mask", "row", "site", "patient_id")
#: keys added by the stress test's bias injection, batched when present
_OPTIONAL = ("bias_region", "bias_present")
_STACKED = ("image", "mask", "bias_region")
_INTEGER = ("label", "has_mask", "row", "bias_present")


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
    (no augmentation, nothing cached, in record order). Used by explain, predict, the report and the stress
    test alike, so that they all see the images exactly as the run's own test evaluation did."""
    data_cfg = cfg.model_copy(update={"cache": "none"})
    return build_loader(build_dataset(records, data_cfg, train=False, extra=extra), data_cfg, shuffle=False,
                        batch_size=batch_size)
