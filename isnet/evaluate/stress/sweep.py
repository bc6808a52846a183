"""The sweep: one nested MLflow run per cell, resumable, every record through a Tracker."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from isnet.config.load import config_to_dict, validate_config  # noqa: E402
from isnet.evaluate.stress.config import StressConfig  # noqa: E402
from isnet.data.dataset import eval_loader  # noqa: E402
from isnet.data.manifest import Manifest, load_manifest  # noqa: E402
from isnet.errors import UserError  # noqa: E402
from isnet.lrp import run_lrp_config, supports_model  # noqa: E402

from isnet.evaluate.stress.cells import (STATE_FILE, TEST_SETS, Cell, _write_csv_atomic, cells_of,  # noqa: E402
                                          done_keys, fingerprint, parse_method_spec, read_results)
from isnet.evaluate.stress.scoring import (bias_heatmap_figure, bias_transform, evaluate_set, heatmap_account,  # noqa: E402
                                           token_effect)
from isnet.evaluate.stress.summary import drop_plot, summarise, summary_markdown  # noqa: E402

logger = logging.getLogger(__name__)


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
        from isnet.tracking import BUFFER_NAME, RunUnavailable, Tracker, read_run

        state_path = self.out / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if state and state.get("fingerprint") != fp:
            raise UserError(f"{self.out} holds a stress test with different data, biases or training settings "
                            f"(fingerprint {state.get('fingerprint')} ≠ {fp}); choose another out_dir")
        t = self.cfg.train.tracking
        self.parent = Tracker(t.experiment, t.tracking_uri)
        parent_id = state.get("parent_run_id")
        if parent_id is not None:
            try:
                read_run(parent_id, t.tracking_uri)
            except RunUnavailable as exc:  # no store, unknown run, store error, unreachable server
                logger.warning(f"note: parent MLflow run {parent_id} cannot be read ({exc}); starting a new one")
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
        from isnet.tracking import child_runs

        t = self.cfg.train.tracking
        runs = child_runs(self.parent_id, t.experiment, t.tracking_uri, tags={"stress.evaluated": "1"})
        out = {}
        for r in runs:
            tg = r.tags
            cell = (tg["stress.method"], f"{float(tg['stress.strength']):g}", int(tg["stress.seed"]))
            rows = []
            for k, v in r.metrics.items():
                if k.startswith("stress."):
                    _, test_set, metric = k.split(".", 2)
                    rows.append({"method": cell[0], "strength": float(cell[1]), "seed": cell[2],
                                 "run_id": r.run_id, "test_set": test_set, "metric": metric, "value": v})
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
                                      keep=self.cfg.heatmap_examples if mode == "all" else 0,
                                      target=self.target if mode in ("clean", "flipped") else None)
        for mode, (m, _, _) in sets.items():
            name = "biased" if mode == "all" else mode
            keep = m if mode != "all" else {k: v for k, v in m.items() if k in ("bg_share", "bias_share")}
            for k, v in keep.items():
                metrics[f"stress.{name}.{k}"] = v
        for k in ("accuracy", "balanced_accuracy", "macro_auc"):
            metrics[f"stress.drop.{k}"] = sets["clean"][0][k] - sets["flipped"][0][k]
        flipped = sets["flipped"][2]
        effect = token_effect(sets["clean"][2]["probs"], flipped["probs"], flipped["bias_present"], self.target)
        if not math.isnan(effect["token_shift"]):
            metrics["stress.clean.target_gap"] = effect["target_gap"]
            metrics["stress.flipped.token_shift"] = effect["token_shift"]
        if "logit" in flipped and flipped["bias_present"].any():  # with LRP: the same pass gave the target's totals
            for k, v in heatmap_account(sets["clean"][2], flipped, flipped["bias_present"]).items():
                metrics[f"stress.flipped.{k}"] = v
        metrics["stress.train.seconds"] = time.perf_counter() - t0
        for key, v in metrics.items():
            _, test_set, metric = key.split(".", 2)
            rows.append({"method": cell.method, "strength": cell.strength, "seed": cell.seed,
                         "run_id": result.run_id, "test_set": test_set, "metric": metric, "value": float(v)})
        kept = sets["all"][1]
        fig = None
        if kept["image"]:
            title = (f"{cell.method}, strength {cell.strength:g}, seed {cell.seed}: "
                     f"test images with the bias (cyan), LRP of the predicted class")
            fig = bias_heatmap_figure(kept, self.classes, title)
            (self.out / "heatmaps").mkdir(parents=True, exist_ok=True)
            fig.savefig(self.out / "heatmaps" / f"{cell.name}.png", dpi=110)
        self._log_child(result.run_id, result.checkpoint_dir, metrics, fig)
        if fig is not None:
            plt.close(fig)
        c, f = sets["clean"][0], sets["flipped"][0]
        self.log(f"cell {cell.name}: accuracy clean {c['accuracy']:.3f}, aligned {sets['aligned'][0]['accuracy']:.3f}, "
                 f"flipped {f['accuracy']:.3f} (drop {100 * (c['accuracy'] - f['accuracy']):+.1f} points); "
                 f"bg share clean {c.get('bg_share', math.nan):.3f}, "
                 f"biased {sets['all'][0].get('bg_share', math.nan):.3f}; "
                 f"token shift {effect['token_shift']:+.2f} against a target gap of {effect['target_gap']:.2f} "
                 f"(logits); target logit {metrics.get('stress.flipped.logit_shift', math.nan):+.2f}, "
                 f"its heatmap's total {metrics.get('stress.flipped.heatmap_shift', math.nan):+.2f}")
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
        with self.parent.ending_run():  # FINISHED, KILLED on Ctrl-C, FAILED on any error
            done = done_keys(results)
            recovered = {k: v for k, v in self._mlflow_done().items() if k not in done and v}
            if recovered:
                results = pd.concat([results, pd.DataFrame([r for v in recovered.values() for r in v])],
                                    ignore_index=True)
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
            wanted = {c.key for c in cells_of(self.cfg)}
            keys = zip(results["method"].astype(str), results["strength"].map(lambda s: f"{float(s):g}"),
                       results["seed"].astype(int))
            mine = results[[k in wanted for k in keys]]
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
        return summary
