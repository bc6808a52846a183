"""Scoring one trained cell: the bias transform of each test set, metrics with LRP background and bias
shares, the token's effect on the decision (paired clean and flipped images) and how much of it the heatmap
shows, and the heatmap figure with the bias outlined."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from isnet.data.bias import BiasSpec, InjectBiasd  # noqa: E402
from isnet.measure.figures import heatmap_grid  # noqa: E402
from isnet.measure.metrics import classification_metrics  # noqa: E402
from isnet.measure.relevance import explained_batches  # noqa: E402
from isnet.lrp import LRPConfig  # noqa: E402


# -- evaluation ---------------------------------------------------------------------------------------
def bias_transform(specs: list[BiasSpec], target: int, mode: str, strength: float, seed: int,
                   names: dict[int, str]) -> InjectBiasd:
    return InjectBiasd(specs, target=target, mode=mode, strength=strength, seed=seed, names=names)


def evaluate_set(model: torch.nn.Module, loader, num_classes: int, device: torch.device, lrp: LRPConfig | None,
                 keep: int = 0, target: int | None = None) -> tuple[dict[str, float], dict, dict[str, np.ndarray]]:
    """Metrics of one test set, LRP background share (outside the lungs) and bias share (inside the bias
    footprint, images carrying the bias) of the predicted class; the first ``keep`` images for figures; per image
    the probabilities and whether it carries the bias (for ``token_effect``), and with ``target`` (and LRP) that
    class's logit and heatmap total Σ R from the same pass (``logit``, ``total``, for ``heatmap_account``)."""
    probs, labels, bg, on_bias, present = [], [], [], [], []
    totals: dict[str, list] = {"logit": [], "total": []}
    kept: dict[str, list] = {"image": [], "mask": [], "heatmap": [], "bias": [], "label": [], "pred": []}
    for out in explained_batches(model, loader, device, lrp, also=target):
        b, p, heat = out["batch"], out["probs"].numpy(), out["heat"]
        probs.append(p)
        labels.append(b["label"].numpy())
        present.append(b["bias_present"].bool().numpy())
        if heat is None:
            continue
        if target is not None:
            totals["logit"].append(out["also_logit"].numpy())
            totals["total"].append(out["also_total"].numpy())
        bg.append(out["bg_share"].numpy())
        a = heat[:, 0].abs()
        share = (a * b["bias_region"][:, 0].to(a.dtype)).sum((-2, -1)) / a.sum((-2, -1)).clamp_min(1e-12)
        on_bias.append(share[b["bias_present"].bool()].numpy())
        if len(kept["image"]) < keep:
            take = min(keep - len(kept["image"]), len(p))
            kept["image"].extend(b["image"][:take, 0].numpy())
            kept["mask"].extend(b["mask"][:take, 0].numpy())
            kept["bias"].extend(b["bias_region"][:take, 0].numpy())
            kept["heatmap"].extend(heat[:take, 0].numpy())
            kept["label"].extend(b["label"][:take].tolist())
            kept["pred"].extend(p.argmax(1)[:take].tolist())
    y, pr = np.concatenate(labels), np.concatenate(probs)
    out = classification_metrics(y, pr, num_classes)
    out.pop("macro_f1", None)
    if bg:
        out["bg_share"] = float(np.nanmean(np.concatenate(bg)))
        ob = np.concatenate(on_bias)
        if len(ob):
            out["bias_share"] = float(ob.mean())
    per_image = {"probs": pr, "bias_present": np.concatenate(present)}
    per_image.update({k: np.concatenate(v) for k, v in totals.items() if v})
    return out, kept, per_image


def token_effect(clean_probs: np.ndarray, token_probs: np.ndarray, carries: np.ndarray,
                 target: int) -> dict[str, float]:
    """What the token does to the decision, from the same images without and with it (rows paired).

    The target's margin is log p_target − max over the other classes of log p (= the logit difference).
    ``target_gap``: median of −margin on the clean images (how far the target class lies below the winner);
    ``token_shift``: mean change of the margin that the token causes. A token shift comparable to the gap flips
    predictions, however little relevance LRP puts on the token; NaN where no image carries the token."""
    if clean_probs.shape != token_probs.shape or len(carries) != len(clean_probs):
        raise ValueError(f"token_effect needs paired rows: clean {clean_probs.shape}, with token {token_probs.shape}, "
                         f"{len(carries)} flags")
    if not carries.any():
        return {"target_gap": math.nan, "token_shift": math.nan}

    def margin(p: np.ndarray) -> np.ndarray:
        logp = np.log(np.clip(p[carries], 1e-12, None))
        others = np.delete(logp, target, axis=1)
        return logp[:, target] - others.max(axis=1)

    m0, m1 = margin(clean_probs), margin(token_probs)
    return {"target_gap": float(np.median(-m0)), "token_shift": float(np.mean(m1 - m0))}


def heatmap_account(clean: dict[str, np.ndarray], token: dict[str, np.ndarray],
                    carries: np.ndarray) -> dict[str, float]:
    """How much of the token's effect on the target logit its heatmap shows (rows paired as in ``token_effect``;
    ``logit`` and ``total`` per image, as ``evaluate_set`` gives them with ``target``).

    ``logit_shift``: mean change of the target logit that the token causes; ``heatmap_shift``: mean change of the
    total Σ R of the target's heatmap. Relevance that the rules give to no pixel (biases and BatchNorm shifts,
    ε stabilisers) makes up the difference; a shortcut acting through it is invisible in the heatmap and to any
    loss built on the heatmap. NaN where no image carries the token."""
    n = len(carries)
    if any(len(d[k]) != n for d in (clean, token) for k in ("logit", "total")):
        raise ValueError(f"heatmap_account needs paired rows: {n} flags, clean {len(clean['logit'])}, "
                         f"with token {len(token['logit'])}")
    if not carries.any():
        return {"logit_shift": math.nan, "heatmap_shift": math.nan}
    return {k: float(np.mean((token[src] - clean[src])[carries]))
            for k, src in (("logit_shift", "logit"), ("heatmap_shift", "total"))}


def bias_heatmap_figure(kept: dict, classes: list[str], title: str):
    """``heatmap_grid`` with the injected bias outlined in cyan on both panels."""
    titles = [f"{classes[t]} → {classes[p]}" for t, p in zip(kept["label"], kept["pred"])]
    cols = min(4, max(len(titles), 1))
    fig = heatmap_grid(kept["image"], kept["mask"], kept["heatmap"], titles, columns=cols)
    axes = fig.axes
    for i, region in enumerate(kept["bias"]):
        if region.any():
            r, c = divmod(i, cols)
            for ax in axes[r * 2 * cols + 2 * c: r * 2 * cols + 2 * c + 2]:
                ax.contour(region > 0.5, levels=[0.5], colors="cyan", linewidths=0.6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
