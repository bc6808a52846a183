"""LRP-aware forward of plain layer sequences (nn.Sequential CNNs, VGG, and the sequential parts of others)."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

from torch import Tensor, nn

from .batchnorm import BatchNorm
from .tracer import Tracer

LINEAR = (nn.Conv2d, nn.Linear)
AVG_POOL = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
PASS = (nn.Flatten, nn.Identity)
SUPPORTED = LINEAR + BatchNorm + AVG_POOL + PASS + (nn.ReLU, nn.MaxPool2d, nn.Dropout)

Block = Callable[[Tracer, nn.Module, Tensor], Tensor]


def leaves(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Flatten nested nn.Sequential containers into the ordered list of layers."""
    out: list[nn.Module] = []
    for m in modules:
        if type(m) is nn.Sequential:
            out.extend(leaves(m))
        else:
            out.append(m)
    return out


def check_layers(modules: Iterable[nn.Module], extra: Optional[Mapping[type, Block]] = None) -> None:
    """Raise TypeError naming the first layer the LRP forward cannot handle."""
    for m in leaves(modules):
        if extra and isinstance(m, tuple(extra)):
            continue
        if not isinstance(m, SUPPORTED):
            raise TypeError(f"LRP: unsupported layer type {type(m).__name__}")
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise TypeError(f"LRP: unsupported Conv2d padding_mode {m.padding_mode!r}")
        if isinstance(m, nn.MaxPool2d) and m.return_indices:
            raise TypeError("LRP: unsupported MaxPool2d with return_indices=True")


def run_layers(
    tr: Tracer, a: Tensor, modules: Iterable[nn.Module], extra: Optional[Mapping[type, Block]] = None
) -> Tensor:
    """Apply ``modules`` in order with their LRP rules; a BatchNorm right after a linear layer is folded into it.
    ``extra`` maps further module types (architecture blocks) to their own LRP-aware forwards."""
    mods = leaves(modules)
    check_layers(mods, extra)
    i = 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        block = next((f for t, f in (extra or {}).items() if isinstance(m, t)), None)
        if block is not None:
            a = block(tr, m, a)
        elif isinstance(m, LINEAR):
            if isinstance(nxt, BatchNorm):
                a = tr.linear_layer(a, m, nxt)
                i += 1
            else:
                a = tr.linear_layer(a, m)
        elif isinstance(m, BatchNorm):
            a = tr.batch_norm(a, m)
        elif isinstance(m, nn.ReLU):
            a = tr.relu(a)
        elif isinstance(m, nn.MaxPool2d):
            a = tr.max_pool(a, m)
        elif isinstance(m, AVG_POOL):
            a = tr.avg_pool(a, m)
        elif isinstance(m, nn.Dropout):
            a = tr.dropout(a, m)
        else:  # Flatten, Identity
            a = m(a)
        i += 1
    return a


def sequential_forward(tr: Tracer, model: nn.Sequential, x: Tensor) -> Tensor:
    return run_layers(tr, x, model)
