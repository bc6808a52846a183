"""The lung segmenter network: a segmentation-models-pytorch U-Net on one grey channel, one logit per pixel.

No pretrained weights are ever downloaded (``encoder_weights=None``): hospitals' machines are often offline
and the weights would have to be vetted. The default encoder, ``mobilenet_v2``, was the fastest U-Net encoder
on CPU among those measured (docs/segmenter.md).
"""

from __future__ import annotations

import torch

DEFAULT_ENCODER = "mobilenet_v2"


def build_segmenter(encoder: str = DEFAULT_ENCODER, decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
                    in_channels: int = 1) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    from isnet.errors import UserError

    try:
        return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=1,
                        encoder_depth=len(decoder_channels), decoder_channels=tuple(decoder_channels))
    except (KeyError, ValueError) as exc:
        known = ", ".join(sorted(smp.encoders.get_encoder_names())[:12])
        raise UserError(f"segmenter encoder {encoder!r} cannot be built ({str(exc).splitlines()[0][:120]}); "
                        f"segmentation-models-pytorch encoders include {known}, ...") from None
