"""Initial weights of a classifier (``model.init``): ImageNet, a state-dict file, or an earlier run.

Nothing is downloaded. ``imagenet`` reads torchvision's weight file of the backbone from torch's hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``, where torchvision itself would keep it) or from ``model.init_path``;
when neither has it, the error names the file and where to put it.

Adapting pretrained weights to our networks:

- **1-channel stem**: our radiographs are grey, so the first convolution has one input channel. A 3-channel
  pretrained kernel ``W[o, c, kh, kw]`` becomes ``W'[o, 0, kh, kw] = Σ_c W[o, c, kh, kw]``: on a grey image
  (the same value in R, G and B) the pretrained network's first layer gives exactly the same output.
- **head**: tensors whose shape does not fit (the 1000-class ImageNet classifier, another run's class list)
  are skipped, so the head keeps its fresh initialisation sized for ``data.classes``.
- **DenseNet keys**: torchvision's published DenseNet files use the old names ``norm.1`` / ``conv.2``;
  they are read as ``norm1`` / ``conv2``.

torchxrayvision (``xrv:<weights name>``, the optional extra ``isnet[xrv]``): its DenseNet121 and ResNet50 chest
X-ray weights, from its own cache (``~/.torchxrayvision/models_data/<file>``) or ``model.init_path``. Its
DenseNet files are whole pickled models, which only torchxrayvision itself can unpickle (as it does when it loads
them); its ResNet files are state dicts. The config switches to its input (``data.intensity: xrv``,
``data.crop: center``). Its 18-pathology head is never loaded, whatever the number of classes.

``apply_init`` returns a report (source, loaded, adapted, skipped and missing keys) that training logs as the
artifact ``model_init.json`` and the tags ``isnet.init_loaded`` / ``isnet.init_skipped``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from isnet.config.schema import XRV_BACKBONES, XRV_PREPROCESSING, TrainConfig
from isnet.errors import UserError

#: torchvision's weight enum of each backbone that has ImageNet weights
IMAGENET_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights",
                    "densenet121": "DenseNet121_Weights", "vgg16_bn": "VGG16_BN_Weights"}
_OLD_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                           r"running_var|num_batches_tracked))$")


def imagenet_file(backbone: str) -> tuple[Path, str]:
    """(where torch's hub cache keeps the backbone's ImageNet weights, the URL they are published at)."""
    from torchvision import models as tvm

    if backbone not in IMAGENET_WEIGHTS:
        raise UserError(f"model.init=imagenet: backbone {backbone!r} has no ImageNet weights; choose one of "
                        f"{sorted(IMAGENET_WEIGHTS)}")
    url = getattr(tvm, IMAGENET_WEIGHTS[backbone]).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name, url


def xrv_file(name: str) -> tuple[Path, str]:
    """(where torchxrayvision's cache keeps the weights called ``name``, the URL they are published at)."""
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise UserError(f"model.init=xrv:{name} needs torchxrayvision, which is not installed: "
                        "pip install 'isnet[xrv]'") from None
    known = sorted(k for k in xrv.models.model_urls if k.startswith(tuple(a + "-" for a in XRV_BACKBONES)))
    if name not in known:
        raise UserError(f"model.init=xrv:{name}: torchxrayvision has no weights of that name; choose one of "
                        f"{', '.join(known)}")
    url = xrv.models.model_urls[name]["weights_url"]
    return Path(xrv.utils.get_cache_dir()) / Path(urlparse(url).path).name, url


def _error_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


def _read_state_dict(path: Path, what: str, pickled_model: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weight file; ``pickled_model`` also reads a whole pickled ``nn.Module`` (torchxrayvision's
    own format, only ever asked for under ``xrv:``)."""
    if not path.is_file():
        raise UserError(f"{what}: weight file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        if not pickled_model:
            raise UserError(f"{what}: {path} is not a PyTorch state dict ({_error_line(exc)})") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise UserError(f"{what}: {path} is neither a state dict nor a torchxrayvision model file "
                            f"({_error_line(exc2)})") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):  # training checkpoints keep the weights under one of these
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()) or not obj:
        raise UserError(f"{what}: {path} holds no state dict (a mapping of parameter names to tensors)")
    return obj


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        k = k[len("module."):] if k.startswith("module.") else k  # saved from DataParallel/DDP
        m = _OLD_DENSENET.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def resolve_init(cfg: TrainConfig, model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict ``model.init`` names (for ``model``) and a description of where it came from."""
    init = cfg.model.init
    if init.startswith("run:"):
        from isnet.train.loading import load_best_state

        run_id = init[4:].strip()
        state = load_best_state(run_id, cfg.train.checkpoint_dir, cfg.tracking.tracking_uri)
        other = state.get("config", {}).get("model", {}).get("backbone")
        if other is not None and other != cfg.model.backbone:
            raise UserError(f"model.init=run:{run_id}: that run trained a {other}, this config a "
                            f"{cfg.model.backbone}; set model.backbone={other}")
        theirs = list(state.get("classes") or state.get("config", {}).get("data", {}).get("classes") or [])
        if theirs and theirs != list(cfg.data.classes):
            # same number of classes in another order or meaning: the head would load and mean the wrong thing
            head = _head_prefix(model)
            sd = {k: v for k, v in state["model"].items() if not k.startswith(head)}
            return sd, f"run {run_id} (classes {theirs}: its head is not used)"
        return state["model"], f"run {run_id}"
    if init == "imagenet":
        what = f"model.init=imagenet ({cfg.model.backbone})"
        path = _published_file(cfg, what, *imagenet_file(cfg.model.backbone), "torch's hub cache")
        return _read_state_dict(path, what), f"imagenet file {path}"
    if init.startswith("xrv:"):
        path = _published_file(cfg, f"model.init={init}", *xrv_file(init[4:].strip()), "torchxrayvision's cache")
        return _read_state_dict(path, f"model.init={init}", pickled_model=True), f"torchxrayvision file {path}"
    path = Path(init).expanduser()
    return _read_state_dict(path, f"model.init={init}"), f"state dict {path}"


def _published_file(cfg: TrainConfig, what: str, cached: Path, url: str, cache_name: str) -> Path:
    """``model.init_path`` or the library's cache file; a missing one is an error naming where to put it."""
    path = Path(cfg.model.init_path).expanduser() if cfg.model.init_path else cached
    if not path.is_file():
        hint = (f"model.init_path={path} does not exist" if cfg.model.init_path else
                f"{cached.name} is not in {cache_name}")
        raise UserError(f"{what}: {hint}; isnet downloads nothing: place the file from {url} at {cached} (or set "
                        "model.init_path to where it is)")
    return path


def _head_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the model's final (class) layer: its last ``nn.Linear``."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return name + "."


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], drop_head: bool = False) -> dict:
    """Copy every tensor of ``sd`` whose name and shape fit ``model`` (3-channel first convolutions summed
    to 1 channel; with ``drop_head`` never the final class layer); returns {loaded, adapted, skipped: {key:
    reason}, missing}."""
    sd = _normalise_keys(sd)
    own = model.state_dict()
    head = _head_prefix(model) if drop_head else None
    new, loaded, adapted, skipped = {}, [], [], {}
    for k, v in sd.items():
        if head is not None and k.startswith(head):
            skipped[k] = "head of the pretrained task (rebuilt for data.classes)"
            continue
        if k not in own:
            skipped[k] = "not in this model"
            continue
        target = own[k]
        if v.shape == target.shape:
            new[k] = v.to(target.dtype)
            loaded.append(k)
        elif v.ndim == 4 and target.ndim == 4 and target.shape[1] == 1 and v.shape[1] > 1 and \
                v.shape[0] == target.shape[0] and v.shape[2:] == target.shape[2:]:
            new[k] = v.sum(1, keepdim=True).to(target.dtype)  # grey input: R = G = B
            loaded.append(k)
            adapted.append(k)
        else:
            skipped[k] = f"shape {list(v.shape)} does not fit {list(target.shape)} (kept fresh)"
    if not loaded:
        raise UserError("the initial weights fit no layer of this model (wrong backbone?); first keys of the "
                        f"file: {list(sd)[:3]}")
    model.load_state_dict(new, strict=False)
    missing = [k for k in own if k not in new]
    return {"loaded": loaded, "adapted_to_one_channel": adapted, "skipped": skipped, "missing": missing}


def apply_init(model: nn.Module, cfg: TrainConfig) -> dict | None:
    """Load ``cfg.model.init`` into ``model`` (in place); None for ``none``, else the report."""
    if cfg.model.init == "none":
        return None
    sd, source = resolve_init(cfg, model)
    # another task's classes (ImageNet's, torchxrayvision's pathologies): never its head, even where the
    # number of classes happens to match
    other_task = cfg.model.init == "imagenet" or cfg.model.init.startswith("xrv:")
    report = load_into(model, sd, drop_head=other_task)
    out = {"init": cfg.model.init, "source": source, **report}
    if cfg.model.init.startswith("xrv:"):
        out["input"] = {f"data.{k}": getattr(cfg.data, k) for k in XRV_PREPROCESSING}
    return out


def describe(report: dict) -> str:
    return (f"initial weights from {report['source']}: {len(report['loaded'])} tensors loaded "
            f"({len(report['adapted_to_one_channel'])} summed to one input channel), {len(report['skipped'])} "
            f"skipped, {len(report['missing'])} left fresh (e.g. {report['missing'][:2]})"
            + ("; input as the weights were trained: " + ", ".join(f"{k}={v}" for k, v in report["input"].items())
               if report.get("input") else ""))
