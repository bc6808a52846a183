"""Plot per-epoch validation accuracy, validation background share and training CE of MLflow runs side by side.

Why: a final test accuracy hides how a run got there; ISNet from the initial weights learns slowly, and the
curves show when it catches up with the standard model and whether it was still learning at the end.

Usage: python scripts/figure_training_curves.py OUT.png LABEL=RUN [LABEL=RUN ...]
       RUN: a run id or a run name (the latest run of that name)
       (tracking store: as for `isnet train`, $MLFLOW_TRACKING_URI or the local mlflow/mlflow.db)
"""

from __future__ import annotations

import ast
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from isnet.tracking.store import store_uri  # noqa: E402

PANELS = (("val_accuracy", "validation accuracy"), ("val_bg_share", "validation background share"),
          ("train_ce", "training cross-entropy"))


def _history(client: MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.step for m in points], [m.value for m in points]


def _resolve(client: MlflowClient, run: str) -> str:
    if len(run) == 32 and all(ch in "0123456789abcdef" for ch in run):
        return run
    found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               filter_string=f"tags.mlflow.runName = '{run}'", order_by=["start_time DESC"],
                               max_results=1)
    if not found:
        raise SystemExit(f"no run with id or name {run!r}")
    return found[0].info.run_id


def main(out: str, specs: list[str]) -> None:
    if not specs:
        raise SystemExit(__doc__)
    client = MlflowClient(tracking_uri=store_uri())
    n_classes: set[int] = set()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for spec in specs:
        label, _, run = spec.partition("=")
        if not run:
            raise SystemExit(f"expected LABEL=RUN, got {spec!r}")
        run_id = _resolve(client, run)
        n_classes.add(len(ast.literal_eval(client.get_run(run_id).data.params["data.classes"])))
        style = "--" if "standard" in label else "-"
        for ax, (key, _) in zip(axes, PANELS):
            steps, values = _history(client, run_id, key)
            if steps:
                ax.plot(steps, values, style, label=label, linewidth=1.1)
    for ax, (key, title) in zip(axes, PANELS):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        if key == "train_ce":  # ln K: the CE of a classifier at chance
            for k in sorted(n_classes):
                ax.axhline(math.log(k), color="grey", linewidth=0.6, linestyle=":")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
