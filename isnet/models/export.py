"""Exporting a trained run's best model for use outside isnet: TorchScript, ONNX, the MLflow model registry.

The exported model takes a float32 batch ``[N, 1, S, S]`` already preprocessed as the run's data pipeline
does it, and returns class probabilities (softmax of the logits). The preprocessing it expects is written
beside the model as a JSON sidecar (and into the registered model's metadata), so that a deployment can
reproduce it without isnet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isnet.config.schema import TrainConfig
from isnet.errors import UserError

FORMATS = ("torchscript", "onnx")


class ProbabilityModel(nn.Module):
    """``softmax(model(x), dim=1)``: the classifier with probabilities as its output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def preprocessing_spec(cfg: TrainConfig, run_id: str | None = None) -> dict:
    """What a deployment must do to a radiograph before the exported model sees it, in pipeline order."""
    d = cfg.data
    low, high = d.value_range
    spec = {
        "run_id": run_id,
        "backbone": cfg.model.backbone,
        "classes": list(d.classes),
        "input": {"name": "image", "shape": ["batch", 1, d.image_size, d.image_size], "dtype": "float32",
                  "channels": "1 (greyscale)"},
        "output": {"name": "probabilities", "shape": ["batch", len(d.classes)],
                   "meaning": "softmax class probabilities, columns in the order of 'classes'"},
        "image_size": d.image_size,
        "steps": [
            "read the image as greyscale float (DICOM: modality LUT applied, MONOCHROME1 inverted)",
            f"percentile scaling: the {d.lower_percentile:g}th..{d.upper_percentile:g}th intensity percentiles "
            f"of the image map linearly to 0..1, clipped to [0, 1]",
            *(["crop the largest centred square (rows from H//2 - s//2, columns from W//2 - s//2, s = min(H, W))"]
              if d.crop == "center" else []),
            f"resize (area interpolation) so that the longest side is {d.image_size} px, then zero-pad "
            f"symmetrically to {d.image_size}x{d.image_size}",
            *([f"multiply by the lung mask dilated by {d.input_mask.dilation_px} px (masked-input model)"]
              if d.input_mask is not None else []),
            *(["map [0, 1] to [-1024, 1024]: (2*x - 1) * 1024 (torchxrayvision convention)"]
              if d.intensity == "xrv" else []),
        ],
        "percentile_scaling": {"lower": d.lower_percentile, "upper": d.upper_percentile, "clip": True},
        "crop": d.crop,
        "resize": {"mode": "area", "size_mode": "longest", "pad": "zeros, symmetric"},
        "intensity": d.intensity,
        "value_range": [low, high],
        "input_mask": d.input_mask.model_dump() if d.input_mask is not None else None,
    }
    return spec


def sidecar_path(out: str | Path) -> Path:
    """``model.onnx`` → ``model.preprocessing.json``."""
    p = Path(out)
    return p.with_name(p.stem + ".preprocessing.json")


def _example(cfg: TrainConfig, n: int = 2, seed: int = 0) -> torch.Tensor:
    low, high = cfg.data.value_range
    g = torch.Generator().manual_seed(seed)
    s = cfg.data.image_size
    return low + (high - low) * torch.rand(n, 1, s, s, generator=g)


def export_model(model: nn.Module, cfg: TrainConfig, fmt: str, out: str | Path, run_id: str | None = None) -> Path:
    """Write ``out`` in ``fmt`` (batch size free) and its preprocessing sidecar; returns the sidecar path."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapped = ProbabilityModel(model.cpu().eval()).eval()
    example = _example(cfg)
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapped, example, check_trace=False)
            traced.save(str(out))
        else:
            _export_onnx(wrapped, example, out)
    side = sidecar_path(out)
    spec = preprocessing_spec(cfg, run_id) | {"format": fmt, "model_file": out.name}
    side.write_text(json.dumps(spec, indent=2) + "\n")
    return side


def _export_onnx(wrapped: nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise UserError("ONNX export needs the 'onnx' package: pip install 'isnet[onnx]'") from None
    kwargs = dict(input_names=["image"], output_names=["probabilities"], opset_version=17,
                  dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
    try:
        torch.onnx.export(wrapped, (example,), str(out), dynamo=False, **kwargs)
    except TypeError:  # a torch without the dynamo switch
        torch.onnx.export(wrapped, (example,), str(out), **kwargs)


def register_model(model: nn.Module, cfg: TrainConfig, name: str, run_id: str,
                   tracking_uri: str | None = None) -> tuple[str, str]:
    """Log the probability model with MLflow (signature from an input example, the preprocessing in the
    model's metadata) in a new run of the source run's experiment, and register it as ``name``; returns
    (export run id, registered version)."""
    from isnet.tracking import package_versions, register_pytorch_model

    wrapped = ProbabilityModel(model.cpu().eval()).eval()
    example = _example(cfg).numpy().astype(np.float32)
    with torch.no_grad():
        probs = wrapped(torch.from_numpy(example)).numpy()
    metadata = {"isnet_preprocessing": preprocessing_spec(cfg, run_id)}
    reqs = [f"{k}=={v}" for k, v in package_versions().items()
            if k in ("torch", "torchvision") and v != "not installed"]
    return register_pytorch_model(wrapped, name, run_id, example, probs, metadata=metadata, pip_requirements=reqs,
                                  tracking_uri=tracking_uri or cfg.tracking.tracking_uri)
