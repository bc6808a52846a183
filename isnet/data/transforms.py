"""MONAI dictionary pipelines that turn manifest records into ``{image, mask, label}`` tensors.

Geometry (centre crop, resize, pad, affine augmentation) is applied to image and mask together so the lung
mask stays aligned with the pixels it describes; intensity changes touch the image only. The deterministic
prefix (load → normalise → crop → resize) is what ``CacheDataset`` keeps in memory.

Every step works on the [0, 1] image (percentile scaling, padding and affine fill with black, bias
injection, gamma, masked input); ``data.intensity: xrv`` maps the result to torchxrayvision's [-1024, 1024]
as the very last step, so black stays black (-1024) whatever the convention.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    MaskIntensityd,
    RandAffined,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
)

from isnet.config.schema import XRV_MAX, DataConfig, InputMaskConfig
from isnet.data import io


class LoadXrayd(MapTransform):
    """Read an image (PNG/JPEG/DICOM) and its lung mask (PNG/NIfTI) into channel-first float arrays.

    A record without a mask gets an all-zero mask and ``has_mask = 0``, so methods that need masks can
    tell the difference instead of treating the whole image as background.
    """

    def __init__(self, image_key: str = "image", mask_key: str = "mask"):
        super().__init__(keys=[image_key, mask_key], allow_missing_keys=True)
        self.image_key, self.mask_key = image_key, mask_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        try:
            img = io.read_image(str(d[self.image_key]))
        except Exception as exc:
            where = f" (manifest row {d['row']})" if "row" in d else ""
            raise RuntimeError(f"cannot read image {d[self.image_key]}{where}: {exc}") from exc
        mask_path = d.get(self.mask_key) or ""
        if mask_path:
            mask = io.read_mask(str(mask_path)).astype(np.float32)
            d["has_mask"] = 1
        else:
            mask = np.zeros_like(img, dtype=np.float32)
            d["has_mask"] = 0
        d[self.image_key] = img[None]
        d[self.mask_key] = mask[None]
        return d


class CenterSquareCropd(MapTransform):
    """Crop image and mask ([C, H, W]) to the largest centred square, as torchxrayvision's XRayCenterCrop:
    side s = min(H, W), rows from H//2 - s//2 and columns from W//2 - s//2 (an odd surplus loses its extra
    pixel at the bottom/right)."""

    def __init__(self, keys: Sequence[str] = ("image", "mask")):
        super().__init__(keys=list(keys), allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for k in self.key_iterator(d):
            a = d[k]
            h, w = a.shape[-2:]
            s = min(h, w)
            y0, x0 = h // 2 - s // 2, w // 2 - s // 2
            d[k] = a[..., y0:y0 + s, x0:x0 + s]
        return d


def xrv_normalize(x, maxval: float = 1.0):
    """torchxrayvision's intensity convention, ``(2 * (x / maxval) - 1) * 1024``: [0, maxval] → [-1024, 1024]."""
    return (2.0 * (x / maxval) - 1.0) * XRV_MAX


def xrv_intensity(keys: Sequence[str] = ("image",)) -> ScaleIntensityRanged:
    """Map the [0, 1] image to torchxrayvision's [-1024, 1024] (``xrv_normalize`` with maxval 1), unclipped."""
    return ScaleIntensityRanged(keys=list(keys), a_min=0.0, a_max=1.0, b_min=-XRV_MAX, b_max=XRV_MAX, clip=False)


def base_transforms(cfg: DataConfig) -> list:
    """Load → percentile scaling to [0, 1] → (centre crop) → resize the longest side → pad to a square."""
    size = cfg.image_size
    crop = [CenterSquareCropd()] if cfg.crop == "center" else []
    return [
        LoadXrayd(),
        ScaleIntensityRangePercentilesd(keys="image", lower=cfg.lower_percentile, upper=cfg.upper_percentile,
                                        b_min=0.0, b_max=1.0, clip=True),
        *crop,
        Resized(keys=["image", "mask"], spatial_size=size, size_mode="longest", mode=("area", "nearest")),
        SpatialPadd(keys=["image", "mask"], spatial_size=(size, size)),
    ]


def augment_transforms(cfg: DataConfig) -> list:
    a = cfg.augment
    if not a.enabled:
        return []
    shift = a.translate * cfg.image_size
    return [
        RandAffined(keys=["image", "mask"], prob=a.prob, rotate_range=math.radians(a.rotate_deg),
                    scale_range=(a.scale, a.scale), translate_range=(shift, shift),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandAdjustContrastd(keys="image", prob=a.prob, gamma=a.gamma),
    ]


def dilate_mask(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Binary dilation of a [..., H, W] 0/1 mask by a disc of radius ``px`` pixels (float 0/1 result)."""
    m = (mask > 0.5).float()
    if px <= 0:
        return m
    r = torch.arange(-px, px + 1, dtype=torch.float32, device=m.device)
    disc = ((r[:, None] ** 2 + r[None, :] ** 2) <= px * px + 1e-6).float()[None, None]
    flat = m.reshape((-1, 1) + m.shape[-2:])
    hit = F.conv2d(flat, disc, padding=px) > 0.5
    return hit.float().reshape(m.shape)


class MaskInputd(MapTransform):
    """``image *= dilate(mask)``: the classifier sees only the (slightly enlarged) lungs.

    The last step of every pipeline, so the dilation is in pixels of the network input and the mask has
    moved with the image through augmentation. A record without a mask cannot be masked: an error naming the
    row (``isnet segmenter predict`` fills missing masks into a new manifest first). The multiply is MONAI's
    ``MaskIntensityd``; the dilation and the check are ours.
    """

    def __init__(self, cfg: InputMaskConfig):
        super().__init__(keys=["image", "mask"])
        self.cfg = cfg
        self._multiply = MaskIntensityd(keys="image", mask_key="_input_mask")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not d.get("has_mask", 1):
            where = f"manifest row {d['row']}" if "row" in d else "an image"
            raise RuntimeError(f"{where} has no lung mask, but this model was trained with masked input "
                               f"(method masked_input, mask source {self.cfg.source!r}) and needs one")
        d["_input_mask"] = dilate_mask(torch.as_tensor(d["mask"]), self.cfg.dilation_px)
        d = dict(self._multiply(d))
        del d["_input_mask"]
        return d


def build_transforms(cfg: DataConfig, train: bool, extra: Sequence = ()) -> Compose:
    """``extra`` transforms run right after resize/pad, before augmentation (e.g. the stress test's bias
    injection); deterministic ones are cached with the prefix by ``CacheDataset``."""
    steps = base_transforms(cfg) + list(extra)
    if train:
        steps += augment_transforms(cfg)
    steps.append(EnsureTyped(keys=["image", "mask"], dtype=torch.float32, track_meta=False))
    if cfg.input_mask is not None:  # masked-input models: train, val, test and explain alike
        steps.append(MaskInputd(cfg.input_mask))
    if cfg.intensity == "xrv":  # last, so everything above (fills, biases, masking) works in [0, 1]
        steps.append(xrv_intensity())
    return Compose(steps)
