"""MONAI dictionary pipelines that turn manifest records into ``{image, mask, label}`` tensors.

Geometry (centre crop, resize, pad, affine augmentation) is applied to image and mask together so the lung
mask stays aligned with the pixels it describes; intensity changes touch the image only. The deterministic
prefix (load → normalise → crop → resize, :func:`cache_transforms`) is what the memory or disk cache keeps,
stored in ``data.cache_dtype`` by :class:`ToCacheDtyped` and turned back into float32 by
:class:`FromCacheDtyped` at the start of :func:`after_cache_transforms` (augmentation, masking, intensity).

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
            img, bits = io.read_image_bits(str(d[self.image_key]))
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
        d[SOURCE_BITS] = bits or 0  # 8, 16 or 0 (unknown): what data.cache_dtype=auto stores the image in
        return d


#: key LoadXrayd adds: the bit depth of the source image (8, 16, or 0 when the file does not say)
SOURCE_BITS = "source_bits"
#: levels of the integer cache dtypes: the [0, 1] image is stored as round(x * top)
_INT_TOP = {torch.uint8: 255.0, torch.uint16: 65535.0}
_TORCH_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16, "float16": torch.float16, "float32": torch.float32}


def _plain_tensor(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.as_tensor() if hasattr(t, "as_tensor") else t  # MetaTensor → its plain tensor (no meta in the cache)


class ToCacheDtyped(MapTransform):
    """Store the [0, 1] image in ``dtype`` and the 0/1 masks as uint8, as plain tensors, for the cache.

    ``uint8``/``uint16`` quantise to 256/65536 levels (``round(x * 255)``: at most half a level off, 1/510 or
    1/131070); ``float16`` rounds to half precision; ``float32`` keeps the values. ``auto`` takes the source's
    bit depth (``source_bits`` from :class:`LoadXrayd`): uint8 for 8-bit sources, uint16 up to 16 bits,
    float16 when unknown. An image outside [0, 1] (a transform inserted before the cache that leaves the
    range) is kept in float32 rather than clipped. Inverse: :class:`FromCacheDtyped`.
    """

    def __init__(self, dtype: str = "auto", image_keys: Sequence[str] = ("image",),
                 mask_keys: Sequence[str] = ("mask",)):
        super().__init__(keys=[*image_keys, *mask_keys], allow_missing_keys=True)
        if dtype != "auto" and dtype not in _TORCH_DTYPES:
            raise ValueError(f"unknown cache dtype {dtype!r}; one of auto, {', '.join(_TORCH_DTYPES)}")
        self.dtype, self.image_keys, self.mask_keys = dtype, tuple(image_keys), tuple(mask_keys)

    def image_dtype(self, bits: int) -> torch.dtype:
        if self.dtype != "auto":
            return _TORCH_DTYPES[self.dtype]
        return torch.uint8 if bits == 8 else torch.uint16 if bits == 16 else torch.float16

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        want = self.image_dtype(int(d.pop(SOURCE_BITS, 0) or 0))
        for k in self.image_keys:
            if k not in d:
                continue
            x = _plain_tensor(d[k]).to(torch.float32)
            if want in _INT_TOP:
                lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
                if lo < -1e-6 or hi > 1 + 1e-6:
                    d[k] = x  # not a [0, 1] image: quantising would clip it
                    continue
                top = _INT_TOP[want]
                d[k] = torch.round(x.clamp(0.0, 1.0) * top).to(want)
            else:
                d[k] = x.to(want)
        for k in self.mask_keys:
            if k in d:
                m = _plain_tensor(d[k])
                d[k] = m.to(torch.float32) if self.dtype == "float32" else (m > 0.5).to(torch.uint8)
        return d


class FromCacheDtyped(MapTransform):
    """The inverse of :class:`ToCacheDtyped`: float32 image (uint8/uint16 divided by 255/65535) and masks."""

    def __init__(self, image_keys: Sequence[str] = ("image",), mask_keys: Sequence[str] = ("mask",)):
        super().__init__(keys=[*image_keys, *mask_keys], allow_missing_keys=True)
        self.image_keys, self.mask_keys = tuple(image_keys), tuple(mask_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for k in self.image_keys:
            if k in d:
                x = torch.as_tensor(d[k])
                top = _INT_TOP.get(x.dtype)
                d[k] = x.to(torch.float32) / top if top else x.to(torch.float32)
        for k in self.mask_keys:
            if k in d:
                d[k] = torch.as_tensor(d[k]).to(torch.float32)
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


def _final_transforms(cfg: DataConfig, train: bool) -> list:
    """Augmentation (training), float32 tensors, masked input, the intensity convention."""
    steps = augment_transforms(cfg) if train else []
    steps.append(EnsureTyped(keys=["image", "mask"], dtype=torch.float32, track_meta=False))
    if cfg.input_mask is not None:  # masked-input models: train, val, test and explain alike
        steps.append(MaskInputd(cfg.input_mask))
    if cfg.intensity == "xrv":  # last, so everything above (fills, biases, masking) works in [0, 1]
        steps.append(xrv_intensity())
    return steps


def build_transforms(cfg: DataConfig, train: bool, extra: Sequence = ()) -> Compose:
    """The whole pipeline without a cache (``data.cache: none``), in float32 throughout. ``extra``
    transforms run right after resize/pad, before augmentation (e.g. the stress test's bias injection)."""
    return Compose(base_transforms(cfg) + list(extra) + _final_transforms(cfg, train))


def cache_transforms(cfg: DataConfig, extra: Sequence = ()) -> Compose:
    """What a cache keeps: the deterministic prefix (and ``extra``, when given), stored in ``data.cache_dtype``.
    Every step is deterministic, so MONAI's caches keep the result of the whole chain."""
    return Compose(base_transforms(cfg) + list(extra) + [ToCacheDtyped(cfg.cache_dtype)])


def after_cache_transforms(cfg: DataConfig, train: bool, extra: Sequence = ()) -> Compose:
    """What runs on every access of a cached item: back to float32, ``extra`` (when the cache could not keep
    it), then augmentation, masking and the intensity convention as in :func:`build_transforms`. The image
    the augmentation sees differs from the uncached pipeline's by the cache dtype's rounding only."""
    return Compose([FromCacheDtyped(), *extra, *_final_transforms(cfg, train)])


#: the settings the cached arrays depend on (everything :func:`cache_transforms` reads from the config);
#: the disk cache's folder name is a hash of these, so that changing one starts a new cache
CACHE_KEY_FIELDS = ("image_size", "lower_percentile", "upper_percentile", "crop", "cache_dtype")
#: bump when the cached prefix changes in a way the settings above do not show
CACHE_FORMAT = 1
