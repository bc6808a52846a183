"""Background randomisation: give each image the background of another image of the batch, or noise.

A shortcut in the background only works while the background stays tied to the class. Replacing everything
outside the (dilated) lung mask by the background of a randomly chosen image of the same batch breaks that
tie at no cost at inference: it is the data-side counterpart of ISNet's background-relevance loss.

The donor of each image's background is drawn uniformly from the *previous* batch (the first batch draws
from itself). A donor from the image's own batch would not do: a covid image's batch holds at least one covid
image, itself, so its donor would carry a covid-only token more often than a normal image's donor. Drawn from
another batch, the donor carries a background feature with the same probability whatever the image's class,
so after a swap at p = 1 no background feature is tied to the class.

The transform works on a collated batch ({"image": [B, C, H, W], "mask": [B, 1, H, W], ...}) because a swap
needs two images; it is a MONAI dictionary transform with its own random state like MONAI's ``Rand*d``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

from isnet.data.transforms import dilate_mask

#: where a replaced background comes from
SOURCES = ("batch", "noise")


def smooth_noise(shape: torch.Size, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator,
                 scale: int = 4) -> torch.Tensor:
    """Low-frequency Gaussian noise of the given per-image mean and standard deviation: white noise on a grid
    ``scale`` times coarser, upsampled bilinearly (a texture, not pixel-level static that a network ignores)."""
    b, c, h, w = shape
    coarse = torch.randn((b, c, max(1, h // scale), max(1, w // scale)), generator=generator)
    noise = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    noise = (noise - noise.mean(dim=(1, 2, 3), keepdim=True)) / noise.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return noise * std.view(-1, 1, 1, 1) + mean.view(-1, 1, 1, 1)


def swap_backgrounds(image: torch.Tensor, lungs: torch.Tensor, donors: torch.Tensor, apply: torch.Tensor
                     ) -> torch.Tensor:
    """``image`` with the pixels outside ``lungs`` (0/1, [B, 1, H, W]) of image i replaced, where ``apply[i]``,
    by the same pixels of ``donors[i]``; the lungs of image i are kept as they are."""
    keep = lungs.to(image.dtype)
    swapped = image * keep + donors.to(image.dtype) * (1 - keep)
    return torch.where(apply.view(-1, 1, 1, 1), swapped, image)


class BackgroundSwapd(Randomizable, MapTransform):
    """Replace, with probability ``prob`` per image, the background (outside the lung mask dilated by
    ``dilation_px``) of each image of a collated batch.

    ``source``: ``batch``, the background of a donor image drawn uniformly from the previous batch the
    transform saw (from the batch itself the first time); ``noise``, a smooth noise texture with the mean and
    standard deviation of the batch's backgrounds. ``carry_keys`` are per-image background annotations
    ([B, 1, H, W] footprints, e.g. the stress test's ``bias_region``) that follow the background they describe:
    the footprint of image i becomes that of its donor outside the lungs of i (none for noise), and
    ``bias_present`` (when in the batch) says whether anything of it is left. ``partner_key`` receives each
    image's donor: its index in the donor batch, -1 for noise, -2 where nothing was replaced.
    """

    def __init__(self, prob: float = 1.0, dilation_px: int = 2, source: Literal["batch", "noise"] = "batch",
                 image_key: str = "image", mask_key: str = "mask", carry_keys: Sequence[str] = ("bias_region",),
                 present_key: str = "bias_present", partner_key: str = "background_from"):
        super().__init__(keys=[image_key], allow_missing_keys=False)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob {prob} must be in [0, 1]")
        if source not in SOURCES:
            raise ValueError(f"unknown background source {source!r}; one of {SOURCES}")
        self.prob, self.dilation_px, self.source = float(prob), int(dilation_px), source
        self.image_key, self.mask_key = image_key, mask_key
        self.carry_keys, self.present_key, self.partner_key = tuple(carry_keys), present_key, partner_key
        self._apply = torch.zeros(0, dtype=torch.bool)
        self._partner = torch.zeros(0, dtype=torch.long)
        self._bank: dict[str, torch.Tensor] | None = None  # the previous batch: image and carry keys
        self._generator = torch.Generator().manual_seed(0)

    def set_random_state(self, seed: int | None = None, state=None) -> "BackgroundSwapd":
        super().set_random_state(seed, state)
        self._generator.manual_seed(int(self.R.randint(0, 2**31 - 1)))
        return self

    def get_state(self) -> dict:
        """The random state, for a checkpoint (a resumed run draws the swaps an uninterrupted run would)."""
        name, keys, pos, has_gauss, gauss = self.R.get_state()
        return {"random_state": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "generator": self._generator.get_state()}  # plain types: checkpoints load with weights_only

    def set_state(self, state: dict) -> None:
        name, keys, pos, has_gauss, gauss = state["random_state"]
        self.R.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        self._generator.set_state(state["generator"])

    def randomize(self, data: tuple[int, int]) -> None:
        n, donors = data
        self._apply = torch.as_tensor(self.R.rand(n) < self.prob)
        self._partner = torch.as_tensor(self.R.randint(0, donors, size=n), dtype=torch.long)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.image_key]
        if self.mask_key not in d:
            raise KeyError(f"background swap needs lung masks in the batch (key {self.mask_key!r})")
        if "has_mask" in d and not bool(torch.as_tensor(d["has_mask"]).all()):
            rows = [int(r) for r, h in zip(d.get("row", []), d["has_mask"]) if not int(h)]
            raise ValueError(f"background swap needs a lung mask for every training image; manifest rows without "
                             f"one: {rows[:10]} (isnet segmenter predict fills them into a new manifest)")
        n = image.shape[0]
        current = {k: torch.as_tensor(d[k]).detach().clone() for k in (self.image_key, *self.carry_keys)
                   if k in d} if self.source == "batch" else {}
        bank = self._bank if self._bank is not None and self._bank[self.image_key].shape[1:] == image.shape[1:] \
            else current
        self.randomize((n, bank[self.image_key].shape[0] if bank else n))
        apply, partner = self._apply.to(image.device), self._partner.to(image.device)
        lungs = dilate_mask(d[self.mask_key], self.dilation_px).to(image.device)
        if self.source == "batch":
            d[self.image_key] = swap_backgrounds(image, lungs, bank[self.image_key].to(image.device)[partner], apply)
        else:
            d[self.image_key] = self._noise_background(image, lungs, apply)
        source = partner if self.source == "batch" else torch.full_like(partner, -1)  # -1: noise
        d[self.partner_key] = torch.where(apply, source, torch.full_like(partner, -2))
        self._carry(d, bank, lungs, apply, partner)
        self._bank = current or None
        return d

    def _noise_background(self, image: torch.Tensor, lungs: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
        background = (1 - lungs).to(image.dtype)
        count = background.sum().clamp_min(1.0)
        mean = (image * background).sum() / count
        std = (((image - mean) * background) ** 2).sum().div(count).sqrt()
        noise = smooth_noise(image.shape, mean.expand(image.shape[0]).cpu(), std.expand(image.shape[0]).cpu(),
                             self._generator).to(image.device, image.dtype)
        return swap_backgrounds(image, lungs, noise, apply)

    def _carry(self, d: dict, bank: dict, lungs: torch.Tensor, apply: torch.Tensor, partner: torch.Tensor) -> None:
        changed = []
        for key in self.carry_keys:
            if key not in d:
                continue
            original = torch.as_tensor(d[key])
            region = original.to(lungs.device, torch.float32)
            inside = region * lungs  # what lies in the lungs stays (it is not swapped)
            # a noise background carries no annotation (the bank is empty then)
            donor = bank[key].to(lungs.device, torch.float32)[partner] if key in bank else torch.zeros_like(region)
            moved = donor * (1 - lungs)
            new = torch.where(apply.view(-1, 1, 1, 1), inside + moved, region)
            d[key] = (new > 0) if original.dtype == torch.bool else new.to(original.dtype)
            changed.append(d[key])
        if changed and self.present_key in d:
            present = torch.stack([c.flatten(1).sum(1) > 0 for c in changed]).any(0)
            d[self.present_key] = present.to(torch.as_tensor(d[self.present_key]).dtype)
