"""The bias-injection stress test (docs/design.md, section 6): does a method fall for a background shortcut?

For every cell (method spec, correlation strength, seed) a classifier is trained with ``isnet.train.run.train``
on the training split with the bias injected into target-class images with probability ``strength`` (and
never into the others), as an MLflow run nested under one parent run. It is then scored on the test split
three ways — clean (no bias), aligned (bias on every target-class image) and flipped (bias on every image of
the other classes, none on the target) — and explained with LRP on clean and biased images.

Results go to ``<out_dir>/results.csv`` (tidy: one row per cell, test set and metric), the child runs'
metrics, ``drop_vs_strength.png``, per-cell heatmap figures and ``summary.md``. Cells already in the CSV, or
evaluated in MLflow under the same parent run, are skipped when the sweep runs again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from isnet.config.load import config_to_dict, validate_config  # noqa: E402
from isnet.config.registry import check_combination, method_names  # noqa: E402
from isnet.evaluate.stress_config import StressConfig  # noqa: E402
from isnet.data.bias import BiasSpec, InjectBiasd  # noqa: E402
from isnet.data.dataset import eval_loader  # noqa: E402
from isnet.data.manifest import Manifest, load_manifest  # noqa: E402
from isnet.errors import UserError  # noqa: E402
from isnet.measure.figures import heatmap_grid  # noqa: E402
from isnet.measure.metrics import classification_metrics  # noqa: E402
from isnet.measure.relevance import explained_batches  # noqa: E402
from isnet.lrp import LRPConfig, run_lrp_config, supports_model  # noqa: E402

TEST_SETS = ("clean", "aligned", "flipped")
CSV_COLUMNS = ["method", "strength", "seed", "run_id", "test_set", "metric", "value"]
STATE_FILE = "sweep.json"


# -- method specs -----------------------------------------------------------------------------------
def parse_method_spec(spec: str) -> list[str]:
    """``"isnet+sgdrop"`` → ``["isnet", "sgdrop"]``, checked against the method registry like a config's
    ``methods:`` list; a bad spec is a ``UserError`` that lists the registered methods."""
    names = [n.strip() for n in spec.split("+")]
    known = method_names()
    if not spec.strip() or any(not n for n in names):
        raise UserError(f"bad method spec {spec!r}: use names joined by '+', e.g. isnet+sgdrop; known: {', '.join(known)}")
    try:
        return check_combination(names)
    except ValueError as exc:
        raise UserError(f"method spec {spec!r}: {exc}") from None


@dataclass(frozen=True)
class Cell:
    method: str
    strength: float
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.method, f"{self.strength:g}", int(self.seed))

    @property
    def name(self) -> str:
        return f"{self.method}_s{self.strength:g}_seed{self.seed}"


def cells_of(cfg: StressConfig) -> list[Cell]:
    return [Cell(m, float(s), int(seed)) for m in cfg.methods for s in cfg.strengths for seed in cfg.seeds]


# -- resumable bookkeeping -----------------------------------------------------------------------------
def fingerprint(cfg: StressConfig, manifest_sha256: str) -> str:
    """What makes results comparable across invocations: the data, the biases and the shared run config
    (methods, strengths and seeds may be extended between invocations)."""
    train = config_to_dict(cfg.train)
    train.pop("methods", None)
    train["train"].pop("seed", None)
    train["tracking"].pop("run_name", None)
    blob = json.dumps({"manifest": manifest_sha256, "target": cfg.target_class, "train": train,
                       "biases": [b.model_dump(mode="json") for b in cfg.biases]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_results(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=CSV_COLUMNS)
    df = pd.read_csv(path, dtype={"method": str, "run_id": str, "test_set": str, "metric": str})
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} is not a stress-test results file (missing columns {missing}); use another out_dir")
    return df[CSV_COLUMNS]


def done_keys(df: pd.DataFrame) -> set[tuple[str, str, int]]:
    return {(str(m), f"{float(s):g}", int(seed)) for m, s, seed in df[["method", "strength", "seed"]].drop_duplicates().itertuples(index=False)}


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


# -- evaluation ---------------------------------------------------------------------------------------
def bias_transform(specs: list[BiasSpec], target: int, mode: str, strength: float, seed: int,
                   names: dict[int, str]) -> InjectBiasd:
    return InjectBiasd(specs, target=target, mode=mode, strength=strength, seed=seed, names=names)


def evaluate_set(model: torch.nn.Module, loader, num_classes: int, device: torch.device, lrp: LRPConfig | None,
                 keep: int = 0) -> tuple[dict[str, float], dict]:
    """Metrics of one test set, LRP background share (outside the lungs) and bias share (inside the bias
    footprint, images carrying the bias) of the predicted class; the first ``keep`` images for figures."""
    probs, labels, bg, on_bias = [], [], [], []
    kept: dict[str, list] = {"image": [], "mask": [], "heatmap": [], "bias": [], "label": [], "pred": []}
    for out in explained_batches(model, loader, device, lrp):
        b, p, heat = out["batch"], out["probs"].numpy(), out["heat"]
        probs.append(p)
        labels.append(b["label"].numpy())
        if heat is None:
            continue
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
    return out, kept


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


# -- the sweep ----------------------------------------------------------------------------------------
class StressTest:
    def __init__(self, cfg: StressConfig, manifest_path: str | Path, *, progress: bool | None = False,
                 log: Callable[[str], None] = print):
        self.cfg = cfg
        self.manifest_path = Path(manifest_path)
        self.progress = progress
        self.log = log
        self.method_names = {spec: parse_method_spec(spec) for spec in cfg.methods}
        if len(set(cfg.methods)) != len(cfg.methods):
            raise UserError("methods lists a method spec twice")
        self.specs = [b.spec() for b in cfg.biases]
        self.classes = list(cfg.train.data.classes)
        self.target = self.classes.index(cfg.target_class)
        self.out = Path(cfg.out_dir)
        self.csv = self.out / "results.csv"

    def cell_config(self, cell: Cell):
        raw = config_to_dict(self.cfg.train)
        raw["methods"] = self.method_names[cell.method]
        raw["train"]["seed"] = cell.seed
        raw["tracking"]["run_name"] = f"stress_{cell.name}"
        return validate_config(raw, f"(stress-test cell {cell.name})")

    # parent run and state -----------------------------------------------------------------------------
    def _open_parent(self, fp: str) -> None:
        from isnet.tracking import BUFFER_NAME, Tracker

        state_path = self.out / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if state and state.get("fingerprint") != fp:
            raise UserError(f"{self.out} holds a stress test with different data, biases or training settings "
                            f"(fingerprint {state.get('fingerprint')} ≠ {fp}); choose another out_dir")
        t = self.cfg.train.tracking
        self.parent = Tracker(t.experiment, t.tracking_uri)
        parent_id = state.get("parent_run_id")
        if parent_id is not None:
            from mlflow.tracking import MlflowClient

            try:
                MlflowClient(self.parent.store_uri).get_run(parent_id)
            except Exception:
                self.log(f"note: parent MLflow run {parent_id} not found in {self.parent.uri}; starting a new one")
                parent_id = None
        self.parent_id = self.parent.start(run_id=parent_id, run_name=None if parent_id else "stress-test")
        # records wait here while the server is unreachable (`isnet tracking sync` finds them)
        self.parent.buffer_path = Path(self.cfg.train.train.checkpoint_dir) / self.parent_id / BUFFER_NAME
        if parent_id is None:
            self.parent.set_tags({"stress.fingerprint": fp, "stress.target_class": self.cfg.target_class,
                                  "stress.biases": ", ".join(s.label for s in self.specs),
                                  "manifest_path": str(self.manifest_path)})
            self.parent.log_params({"stress.fingerprint": fp})
            self.parent.log_dict(self.cfg.model_dump(mode="json"), "config/stress_config.yaml")
        state_path.write_text(json.dumps({"fingerprint": fp, "parent_run_id": self.parent_id,
                                          "tracking_uri": self.parent.uri}, indent=1))

    def _mlflow_done(self) -> dict[tuple[str, str, int], list[dict]]:
        """Evaluated child runs of the parent, as CSV rows (recovers cells missing from a lost CSV)."""
        if self.parent_id is None:
            return {}
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.parent.store_uri)
        exp = client.get_experiment_by_name(self.cfg.train.tracking.experiment)
        runs = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}' "
                                                f"and tags.`stress.evaluated` = '1'", max_results=5000)
        out = {}
        for r in runs:
            tg = r.data.tags
            cell = (tg["stress.method"], f"{float(tg['stress.strength']):g}", int(tg["stress.seed"]))
            rows = []
            for k, v in r.data.metrics.items():
                if k.startswith("stress."):
                    _, test_set, metric = k.split(".", 2)
                    rows.append({"method": cell[0], "strength": float(cell[1]), "seed": cell[2],
                                 "run_id": r.info.run_id, "test_set": test_set, "metric": metric, "value": v})
            out[cell] = rows
        return out

    # one cell -------------------------------------------------------------------------------------------
    def run_cell(self, cell: Cell, manifest: Manifest, names: dict[int, str]) -> list[dict]:
        from isnet.train.checkpoint import BEST_NAME
        from isnet.train.loading import load_checkpoint_model
        from isnet.train.run import resolve_device, train

        tcfg = self.cell_config(cell)
        bias = lambda mode: [bias_transform(self.specs, self.target, mode, cell.strength, cell.seed, names)]  # noqa: E731
        tags = {"stress.method": cell.method, "stress.strength": f"{cell.strength:g}", "stress.seed": cell.seed,
                "stress.cell": cell.name}
        t0 = time.perf_counter()
        result = train(tcfg, self.manifest_path, progress=self.progress, parent_run_id=self.parent_id, tags=tags,
                       extra_transforms={"train": bias("train"), "val": bias("train"), "test": bias("clean")})
        device = resolve_device(tcfg.train.device)
        model, _ = load_checkpoint_model(Path(result.checkpoint_dir) / BEST_NAME, device)
        lrp = run_lrp_config(tcfg) if supports_model(model) else None
        records = manifest.records("test")
        if self.cfg.relevance_images:
            records = records[: self.cfg.relevance_images]
        rows, metrics = [], {}
        sets = {}
        for mode in (*TEST_SETS, "all"):
            loader = eval_loader(records, tcfg.data, extra=bias(mode))
            sets[mode] = evaluate_set(model, loader, len(self.classes), device, lrp,
                                      keep=self.cfg.heatmap_examples if mode == "all" else 0)
        for mode, (m, _) in sets.items():
            name = "biased" if mode == "all" else mode
            keep = m if mode != "all" else {k: v for k, v in m.items() if k in ("bg_share", "bias_share")}
            for k, v in keep.items():
                metrics[f"stress.{name}.{k}"] = v
        for k in ("accuracy", "balanced_accuracy", "macro_auc"):
            metrics[f"stress.drop.{k}"] = sets["clean"][0][k] - sets["flipped"][0][k]
        metrics["stress.train.seconds"] = time.perf_counter() - t0
        for key, v in metrics.items():
            _, test_set, metric = key.split(".", 2)
            rows.append({"method": cell.method, "strength": cell.strength, "seed": cell.seed,
                         "run_id": result.run_id, "test_set": test_set, "metric": metric, "value": float(v)})
        kept = sets["all"][1]
        fig = None
        if kept["image"]:
            fig = bias_heatmap_figure(kept, self.classes, f"{cell.method}, strength {cell.strength:g}, seed {cell.seed}: "
                                                          f"test images with the bias (cyan), LRP of the predicted class")
            (self.out / "heatmaps").mkdir(parents=True, exist_ok=True)
            fig.savefig(self.out / "heatmaps" / f"{cell.name}.png", dpi=110)
        self._log_child(result.run_id, result.checkpoint_dir, metrics, fig)
        if fig is not None:
            plt.close(fig)
        c, f = sets["clean"][0], sets["flipped"][0]
        self.log(f"cell {cell.name}: accuracy clean {c['accuracy']:.3f}, aligned {sets['aligned'][0]['accuracy']:.3f}, "
                 f"flipped {f['accuracy']:.3f} (drop {100 * (c['accuracy'] - f['accuracy']):+.1f} points); "
                 f"bg share clean {c.get('bg_share', math.nan):.3f}, biased {sets['all'][0].get('bg_share', math.nan):.3f}")
        return rows

    def _log_child(self, run_id: str | None, checkpoint_dir: Path, metrics: dict[str, float], fig) -> None:
        """The cell's stress metrics, figure and ``stress.evaluated`` tag on its (finished) child run, through
        a Tracker: buffered with the child's own records while the server is unreachable."""
        if run_id is None:
            return
        from isnet.tracking import BUFFER_NAME, Tracker

        t = Tracker.attach(run_id, self.cfg.train.tracking.experiment, self.parent.uri,
                           Path(checkpoint_dir) / BUFFER_NAME)
        t.log_metrics(metrics, step=0)
        if fig is not None:
            t.log_figure(fig, "stress/heatmaps_biased.png")
        t.set_tags({"stress.evaluated": "1"})  # last: a cell counts as done in MLflow once all of it is there
        t.flush()

    # the whole sweep ----------------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        self.out.mkdir(parents=True, exist_ok=True)
        manifest = load_manifest(self.manifest_path, self.classes, require_masks=True,
                                 split_fractions=self.cfg.train.data.split_fractions,
                                 split_seed=self.cfg.train.data.split_seed)
        for split in ("train", "test"):
            if not manifest.records(split):
                raise UserError(f"manifest {self.manifest_path} has no {split} images; the stress test needs both")
        names = {int(r.row): str(r.image_path) for r in manifest.frame.itertuples(index=False)}
        fp = fingerprint(self.cfg, manifest.sha256)
        results = read_results(self.csv)
        self._open_parent(fp)
        try:
            done = done_keys(results)
            recovered = {k: v for k, v in self._mlflow_done().items() if k not in done and v}
            if recovered:
                results = pd.concat([results, pd.DataFrame([r for v in recovered.values() for r in v])], ignore_index=True)
                _write_csv_atomic(results, self.csv)
                done |= set(recovered)
                self.log(f"recovered {len(recovered)} evaluated cell(s) from MLflow")
            todo = [c for c in cells_of(self.cfg) if c.key not in done]
            skipped = len(cells_of(self.cfg)) - len(todo)
            self.log(f"stress test: {len(cells_of(self.cfg))} cells, {skipped} already done, {len(todo)} to run; "
                     f"parent MLflow run {self.parent_id}; results in {self.csv}")
            for i, cell in enumerate(todo, 1):
                self.log(f"[{i}/{len(todo)}] training {cell.name}")
                rows = self.run_cell(cell, manifest, names)
                results = pd.concat([results, pd.DataFrame(rows)], ignore_index=True)
                _write_csv_atomic(results, self.csv)
        except BaseException as exc:
            self.parent.end("FAILED" if isinstance(exc, Exception) else "KILLED")
            raise
        wanted = {c.key for c in cells_of(self.cfg)}
        mine = results[[k in wanted for k in zip(results["method"].astype(str), results["strength"].map(lambda s: f"{float(s):g}"),
                                                  results["seed"].astype(int))]]
        summary = summarise(mine)
        text = summary_markdown(summary, self.cfg)
        (self.out / "summary.md").write_text(text)
        if len(summary):
            fig = drop_plot(mine)
            fig.savefig(self.out / "drop_vs_strength.png", dpi=120)
            self.parent.log_figure(fig, "stress/drop_vs_strength.png")
            plt.close(fig)
        self.parent.log_artifact(self.csv, "stress")
        self.parent.log_artifact(self.out / "summary.md", "stress")
        if self.cfg.report:
            Path(self.cfg.report).parent.mkdir(parents=True, exist_ok=True)
            Path(self.cfg.report).write_text(text)
        self.parent.end("FINISHED")
        return summary


# -- summaries ----------------------------------------------------------------------------------------
SUMMARY_METRICS = [("clean", "accuracy"), ("aligned", "accuracy"), ("flipped", "accuracy"), ("drop", "accuracy"),
                   ("clean", "macro_auc"), ("flipped", "macro_auc"), ("clean", "bg_share"), ("biased", "bg_share"),
                   ("biased", "bias_share")]


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, strength): mean and standard deviation over seeds of the headline metrics."""
    if results.empty:
        return pd.DataFrame()
    df = results.copy()
    df["col"] = df["test_set"] + "." + df["metric"]
    wide = df.pivot_table(index=["method", "strength", "seed"], columns="col", values="value", aggfunc="first")
    cols = [f"{s}.{m}" for s, m in SUMMARY_METRICS if f"{s}.{m}" in wide.columns]
    g = wide[cols].groupby(level=["method", "strength"], sort=False)
    mean, std = g.mean(), g.std(ddof=1)
    out = mean.add_suffix(" mean").join(std.add_suffix(" sd"))
    out["seeds"] = g.size()
    out["seed list"] = wide.reset_index().groupby(["method", "strength"], sort=False)["seed"].apply(
        lambda s: ",".join(str(int(v)) for v in sorted(s)))
    return out.reset_index()


def _pm(row: pd.Series, col: str, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    m = row.get(f"{col} mean", math.nan)
    s = row.get(f"{col} sd", math.nan)
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    text = fmt.format(m * scale)
    if s is not None and not (isinstance(s, float) and math.isnan(s)):
        text += " ± " + fmt.format(s * scale)
    return text


def summary_markdown(summary: pd.DataFrame, cfg: StressConfig) -> str:
    biases = ", ".join(b.spec().label for b in cfg.biases)
    lines = [f"Bias: {biases} on class `{cfg.target_class}`; accuracies in %, drop = clean − flipped accuracy in "
             f"points; mean ± sd over seeds.", "",
             "| method | strength | seeds | clean acc | aligned acc | flipped acc | drop (points) | clean AUC | "
             "flipped AUC | bg share clean | bg share biased | share on bias |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r['method']} | {r['strength']:g} | {r['seed list']} | {_pm(r, 'clean.accuracy', 100)} | "
            f"{_pm(r, 'aligned.accuracy', 100)} | {_pm(r, 'flipped.accuracy', 100)} | {_pm(r, 'drop.accuracy', 100)} | "
            f"{_pm(r, 'clean.macro_auc', 1, '{:.3f}')} | {_pm(r, 'flipped.macro_auc', 1, '{:.3f}')} | "
            f"{_pm(r, 'clean.bg_share', 1, '{:.2f}')} | {_pm(r, 'biased.bg_share', 1, '{:.2f}')} | "
            f"{_pm(r, 'biased.bias_share', 1, '{:.2f}')} |")
    return "\n".join(lines) + "\n"


def drop_plot(results: pd.DataFrame):
    """Clean→flipped accuracy drop against correlation strength, one line per method, error bars = sd over seeds."""
    d = results[(results["test_set"] == "drop") & (results["metric"] == "accuracy")]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, g in d.groupby("method", sort=False):
        s = g.groupby("strength")["value"]
        m, sd = s.mean() * 100, s.std(ddof=1).fillna(0) * 100
        ax.errorbar(m.index, m.values, yerr=sd.values, marker="o", capsize=3, label=method)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("bias–class correlation strength")
    ax.set_ylabel("accuracy drop clean → flipped (points)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
