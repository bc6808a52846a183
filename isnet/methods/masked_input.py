"""Masked input: the segment-then-classify baseline (docs/design.md, section 5).

The classifier sees image × dilated lung mask, at training and at test time. The masking itself is a data
transform (:class:`isnet.data.transforms.MaskInputd`), switched on by ``data.input_mask``, which the config
sets from ``method.masked_input`` when this method is listed. Because it lives in the run's stored data
config, every pipeline rebuilt from a run (validation, ``Trainer.test``, ``isnet explain``) masks its images
the same way. The mask comes from the manifest (rows without one are filled beforehand by ``isnet segmenter
predict``, which writes a manifest with the predicted masks). This method object only declares that masks are
required and logs how much of the image the classifier sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isnet.config.schema import InputMaskConfig
from isnet.data.transforms import dilate_mask
from isnet.methods.base import LossTerms, Method, register

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.methods.base import TrainContext


@register("masked_input", params=InputMaskConfig)
class MaskedInputMethod(Method):
    name = "masked_input"
    needs_masks = True

    def __init__(self, cfg: "TrainConfig"):
        if cfg.data.input_mask is None:  # the TrainConfig validator sets it; a hand-built config may not
            raise ValueError("masked_input needs data.input_mask; build the config through TrainConfig")
        self.params = cfg.data.input_mask

    def loss(self, ce, out, batch, trainer: "TrainContext") -> LossTerms:
        kept = dilate_mask(batch["mask"], self.params.dilation_px).mean()
        return LossTerms(metrics={"masked_input_kept": float(kept)})
