"""Time to accuracy: what a user pays for ISNet, measured as whole training runs side by side.

A training step's cost (the train-step suite) says little about a recipe: a recipe with a cheap step can still
need many more epochs. This suite trains the standard model and each ISNet recipe on the same data, backbone,
image size and seed, and reports, per run, the epochs and wall-clock seconds until the validation accuracy
first reaches the standard model's best minus a tolerance, the final test accuracy and the validation
background share of the tested checkpoint, each also as a ratio to the standard model's.

Seconds to target count everything the run spent before that epoch ended: the methods' start-up (ISNet's
plain warm-up) and every epoch's training and validation. Per-epoch relevance diagnostics are off in every run
(they would add the same absolute cost to each and blur the ratios); the background share is measured once,
on the tested checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from isnet.config.load import load_config
from isnet.config.schema import TrainConfig
from isnet.data.dataset import eval_loader
from isnet.data.manifest import load_manifest
from isnet.lrp import run_lrp_config, supports_model
from isnet.measure.relevance import mean_background_share
from isnet.methods import ISNetMethod
from isnet.train.checkpoint import BEST_NAME, load_checkpoint
from isnet.train.loading import model_from_state
from isnet.train.run import resolve_device, train

Log = Callable[[str], None]

#: the reference run of every (backbone, seed): plain cross-entropy
STANDARD = "standard"


def _quiet(_: str) -> None:
    pass


def run_config(config: str | Path, name: str, *, backbone: str, size: int, seed: int, epochs: int,
               overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of one bench run: ``name`` is ``standard`` or an ISNet recipe (``method.isnet.recipe``),
    optionally with more methods trained beside ISNet (``warm_start+bg_swap``)."""
    recipe, *extra = name.split("+")
    method = (["methods=[standard]"] if name == STANDARD
              else [f"methods=[{','.join(['isnet', *extra])}]", f"method.isnet.recipe={recipe}"])
    return load_config(config, [*method, f"model.backbone={backbone}", f"data.image_size={size}",
                                f"train.seed={seed}", f"optim.epochs={epochs}", "train.val_bg_share=false",
                                "train.heatmap_every=0", "tracking.log_model=false", *overrides])


def background_share_of(checkpoint: Path, manifest: str | Path, device: str, split: str = "val") -> float:
    """Mean background share (LRP of the predicted class, the run's rules) of a checkpoint on one split."""
    model, mcfg = model_from_state(load_checkpoint(checkpoint), resolve_device(device))
    man = load_manifest(manifest, mcfg.data.classes, split_fractions=mcfg.data.split_fractions,
                        split_seed=mcfg.data.split_seed)
    return mean_background_share(model, eval_loader(man.records(split), mcfg.data), next(model.parameters()).device,
                                 run_lrp_config(mcfg) if supports_model(model) else None)


def time_to_target(history: Sequence[dict], target: float, start_seconds: float = 0.0,
                   extra_epochs: int = 0, from_epoch: int = 1) -> tuple[int | None, float | None]:
    """(epochs, seconds) until the validation accuracy first reaches ``target``; (None, None) if it never does.
    ``start_seconds``/``extra_epochs``: what the run spent before its first epoch (a warm-up) counts too.
    ``from_epoch``: earlier epochs cost time but do not count (e.g. before a P schedule reaches its final P, the
    model is not yet the configured ISNet)."""
    seconds = start_seconds
    for row in history:
        seconds += float(row["epoch_seconds"])
        if int(row["epoch"]) >= from_epoch and float(row["val_accuracy"]) >= target - 1e-9:
            return extra_epochs + int(row["epoch"]), seconds
    return None, None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if (a is not None and b) else None


def _first_counted_epoch(cfg: TrainConfig) -> int:
    """The first epoch at which the run is the configured model (ISNet: its P and balance schedules' final values)."""
    return cfg.method.isnet.final_epoch_key() if "isnet" in cfg.methods else 1


def _warmup_epochs(cfg: TrainConfig) -> int:
    """Plain epochs spent before ISNet's first epoch (0 when the band is set by hand or there is no ISNet): the
    method's own rule (``ISNetMethod.band_warmup_epochs``), so the bench counts what training does."""
    if "isnet" not in cfg.methods:
        return 0
    return ISNetMethod(cfg).band_warmup_epochs()


def convergence_suite(manifest: str | Path, *, config: str | Path, recipes: Sequence[str],
                      backbones: Sequence[str], size: int, seeds: Sequence[int], epochs: dict[str, int],
                      tolerance: float = 0.02, overrides: Sequence[str] = (), log: Log = _quiet) -> dict:
    """Train ``standard`` and every recipe for each (backbone, seed); ``epochs`` maps a run name to its
    ``optim.epochs``. Returns rows (one per run, with ratios to that backbone and seed's standard run)."""
    rows: list[dict] = []
    for backbone in backbones:
        for seed in seeds:
            group: list[dict] = []
            for name in (STANDARD, *recipes):
                cfg = run_config(config, name, backbone=backbone, size=size, seed=seed, epochs=epochs[name],
                                 overrides=overrides)
                log(f"[convergence] {backbone} {size}px seed {seed}: {name}, {cfg.optim.epochs} epochs")
                res = train(cfg, manifest, progress=False)
                warm = _warmup_epochs(cfg)
                group.append({
                    "backbone": backbone, "size": size, "seed": seed, "run": name, "run_id": res.run_id,
                    "epochs": cfg.optim.epochs, "warmup_epochs": warm, "best_epoch": res.best_epoch,
                    "first_counted_epoch": _first_counted_epoch(cfg),
                    "start_seconds": res.fit_start_seconds,
                    "total_seconds": res.fit_start_seconds + sum(float(h["epoch_seconds"]) for h in res.history),
                    "best_val_accuracy": max(float(h["val_accuracy"]) for h in res.history),
                    "test_accuracy": res.test_metrics.get("test_accuracy"),
                    "test_macro_auc": res.test_metrics.get("test_macro_auc"),
                    "val_bg_share": background_share_of(Path(res.checkpoint_dir) / BEST_NAME, manifest,
                                                        cfg.train.device),
                    "curve": [{"epoch": int(h["epoch"]), "val_accuracy": float(h["val_accuracy"]),
                               "epoch_seconds": float(h["epoch_seconds"])} for h in res.history],
                    "config": {"method.isnet": cfg.method.isnet.model_dump() if name != STANDARD else None},
                })
            rows.extend(_with_targets(group, tolerance))
    return {"rows": rows, "settings": {"config": str(config), "manifest": str(manifest), "recipes": list(recipes),
                                       "backbones": list(backbones), "size": size, "seeds": list(seeds),
                                       "epochs": dict(epochs), "tolerance": tolerance,
                                       "overrides": list(overrides)}}


def _with_targets(group: list[dict], tolerance: float) -> list[dict]:
    """Target = the standard run's best validation accuracy − tolerance; epochs/seconds to it and the ratios."""
    base = next(r for r in group if r["run"] == STANDARD)
    target = base["best_val_accuracy"] - tolerance
    for r in group:
        r["target_val_accuracy"] = target
        r["epochs_to_target"], r["seconds_to_target"] = time_to_target(
            r["curve"], target, r["start_seconds"], r["warmup_epochs"], r.get("first_counted_epoch", 1))
    for r in group:
        r["seconds_ratio"] = _ratio(r["seconds_to_target"], base["seconds_to_target"])
        r["epochs_ratio"] = _ratio(r["epochs_to_target"], base["epochs_to_target"])
        r["total_seconds_ratio"] = _ratio(r["total_seconds"], base["total_seconds"])
        r["test_accuracy_gap"] = (None if r["test_accuracy"] is None or base["test_accuracy"] is None
                                  else r["test_accuracy"] - base["test_accuracy"])
    return group
