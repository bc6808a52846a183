"""Make docs/isnet_vs_standard.png: heatmaps of a standard and an ISNet run on the same validation images.

Usage: python scripts/figure_isnet_vs_standard.py STANDARD_RUN ISNET_RUN MANIFEST OUT.png
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from isnet.data.dataset import build_dataset, build_loader  # noqa: E402
from isnet.data.manifest import load_manifest  # noqa: E402
from isnet.measure.relevance import background_share, predicted_class  # noqa: E402
from isnet.lrp import lrp_heatmaps, run_lrp_config  # noqa: E402
from isnet.train.loading import load_run_model  # noqa: E402


def main(std_run: str, isnet_run: str, manifest: str, out: str, n: int = 6) -> None:
    models = {name: load_run_model(run) for name, run in (("standard", std_run), ("ISNet", isnet_run))}
    cfg = models["standard"][1]
    man = load_manifest(manifest, cfg.data.classes, split_fractions=cfg.data.split_fractions,
                        split_seed=cfg.data.split_seed)
    records = man.records("val")
    per_class = [r for k in range(len(cfg.data.classes)) for r in records if r["label"] == k][:0]
    for k in range(len(cfg.data.classes)):
        per_class += [r for r in records if r["label"] == k][: n // len(cfg.data.classes)]
    batch = next(iter(build_loader(build_dataset(per_class, cfg.data, train=False), cfg.data, shuffle=False,
                                   batch_size=len(per_class))))
    fig, axes = plt.subplots(3, len(per_class), figsize=(1.9 * len(per_class), 6.0), squeeze=False)
    for j in range(len(per_class)):
        axes[0, j].imshow(batch["image"][j, 0], cmap="gray", vmin=cfg.data.value_range[0],
                         vmax=cfg.data.value_range[1])
        axes[0, j].contour(batch["mask"][j, 0] > 0.5, levels=[0.5], colors="lime", linewidths=0.6)
        axes[0, j].set_title(cfg.data.classes[int(batch["label"][j])], fontsize=8)
    for i, (name, (model, mcfg)) in enumerate(models.items(), start=1):
        logits, heat = lrp_heatmaps(model, batch["image"], predicted_class, config=run_lrp_config(mcfg))
        share = background_share(heat, batch["mask"])[:, 0]
        for j in range(len(per_class)):
            h = heat[j, 0].detach().numpy()
            v = float(np.percentile(np.abs(h), 99.5)) or 1.0
            axes[i, j].imshow(h, cmap="bwr", vmin=-v, vmax=v)
            axes[i, j].contour(batch["mask"][j, 0] > 0.5, levels=[0.5], colors="lime", linewidths=0.6)
            axes[i, j].set_title(f"{name}: bg {float(share[j]):.0%}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
