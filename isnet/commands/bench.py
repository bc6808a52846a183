"""``isnet bench``: cost of a training step per method, of heatmaps and of data loading (table + JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from isnet.config.schema import BACKBONES
from isnet.errors import UserError

SUITES = ("train-step", "loader", "all", "convergence")
#: data.cache modes the loader suite measures (isnet.bench.suites.CACHE_MODES)
CACHE_MODES = ("memory", "disk", "none")


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time and peak memory of training steps (standard, ISNet, other methods, "
                                     "naive zennit baseline), heatmaps and the data loader")
    p.add_argument("--suite", choices=SUITES, default="all",
                   help="default: all (train-step and loader); convergence: whole training runs, time to the "
                        "standard model's accuracy per ISNet recipe (needs --manifest; not part of 'all')")
    p.add_argument("--backbones", type=_csv(str), default=["resnet18"], help="comma-separated (default resnet18)")
    p.add_argument("--sizes", type=_csv(int), default=[64], help="image sides in pixels (default 64)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--cases", type=_csv(str), default=None,
                   help="only these train-step cases (the standard step always runs), or 'all'; default: all but the "
                        "slow zennit-naive-original")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per case before timing (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per case, interleaved (default 3)")
    p.add_argument("--memory", choices=("fresh", "shared", "off"), default="shared",
                   help="peak memory: one fresh process for all cases of a configuration, peak reset per case "
                        "(default), one fresh process per case (cleanest, slower), or off")
    p.add_argument("--manifest", type=Path, default=None,
                   help="loader suite: manifest to load (default: a small generated phantom set)")
    p.add_argument("--classes", type=_csv(str), default=None, help="loader suite: class names of the manifest")
    p.add_argument("--cache-dtype", choices=("auto", "uint8", "uint16", "float16", "float32"), default="auto",
                   help="loader suite: data.cache_dtype of the memory and disk caches (default auto)")
    p.add_argument("--cache-modes", type=_csv(str), default=None,
                   help="loader suite: comma-separated data.cache modes to measure (default memory,disk,none)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="loader suite: where the disk cache is written (a fresh subfolder, removed afterwards; "
                        "default: the working directory)")
    p.add_argument("--loader-epochs", type=int, default=3,
                   help="loader suite: epochs per cached mode, the first one filling the cache (default 3)")
    p.add_argument("--num-workers", type=int, default=0, help="loader suite: DataLoader workers (default 0)")
    p.add_argument("--config", type=Path, default=Path("pipelines/isnet_covid_tb.yaml"),
                   help="convergence suite: the run config every run starts from (default "
                        "pipelines/isnet_covid_tb.yaml)")
    p.add_argument("--recipes", type=_csv(str), default=None,
                   help="convergence suite: ISNet recipes (method.isnet.recipe) run beside the standard model, "
                        "each optionally with more methods beside ISNet (warm_start+bg_swap) (default: all recipes)")
    p.add_argument("--seeds", type=_csv(int), default=[0], help="convergence suite: training seeds (default 0)")
    p.add_argument("--epochs", type=_csv(str), default=["24"],
                   help="convergence suite: optim.epochs of every run (N), or per run (standard=24,published=48); "
                        "default 24")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="convergence suite: target = the standard run's best validation accuracy minus this "
                        "(default 0.02)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="convergence suite: a config override for every run (repeatable)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    for b in args.backbones:
        if b not in BACKBONES:
            raise UserError(f"--backbones: unknown backbone {b!r}; choose from {', '.join(BACKBONES)}")
    if not args.sizes or min(args.sizes) < 16:
        raise UserError("--sizes: image sizes must be at least 16 px")
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        raise UserError("--batch and --repeats must be >= 1 and --warmup >= 0")
    if args.manifest is not None and not args.manifest.is_file():
        raise UserError(f"--manifest: no such file {args.manifest}")
    bad_modes = [m for m in (args.cache_modes or []) if m not in CACHE_MODES]
    if bad_modes or args.cache_modes == []:
        raise UserError(f"--cache-modes: unknown data.cache mode(s) {bad_modes}; choose from {', '.join(CACHE_MODES)}")
    if args.loader_epochs < 1 or args.num_workers < 0:
        raise UserError("--loader-epochs must be >= 1 and --num-workers >= 0")
    if args.suite == "convergence":
        if args.manifest is None:
            raise UserError("--suite convergence needs --manifest (e.g. the quick-start set: isnet phantom --out "
                            "data/phantom --sites 3 --per-class 200 --seed 0)")
        if not args.config.is_file():
            raise UserError(f"--config: no such file {args.config}")
        if not 0 <= args.tolerance < 1:
            raise UserError(f"--tolerance must lie in [0, 1), got {args.tolerance}")
    import torch  # after the checks: importing the suites (MONAI, torchvision) takes seconds

    from isnet.bench.report import convergence_targets, evaluate_targets, machine_info, render, write_json
    from isnet.bench.suites import loader_suite, train_step_suite

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = device

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result: dict = {"machine": machine_info(), "command": "isnet " + " ".join(sys.argv[1:])}
    if args.suite in ("train-step", "all"):
        try:
            result["train_step"] = train_step_suite(
                args.backbones, args.sizes, args.batch, device=device, warmup=args.warmup, repeats=args.repeats,
                memory=None if args.memory == "off" else args.memory, threads=args.threads, cases=args.cases, log=log)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if args.suite in ("loader", "all"):
        try:
            result["loader"] = loader_suite(args.manifest, size=args.sizes[0], batch=args.batch,
                                            backbone=args.backbones[0], device=device, warmup=args.warmup,
                                            repeats=args.repeats, threads=args.threads, classes=args.classes,
                                            cache_dtype=args.cache_dtype, modes=args.cache_modes,
                                            num_workers=args.num_workers, cache_dir=args.cache_dir,
                                            epochs=args.loader_epochs, log=log)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if args.suite == "convergence":
        result["convergence"] = _run_convergence(args, log)
    result["machine_after"] = {"load_avg": machine_info()["load_avg"]}
    result["targets"] = evaluate_targets(result.get("train_step", {}).get("rows", []),
                                         result.get("loader", {}).get("rows"))
    result["targets"] += convergence_targets(result.get("convergence", {}).get("rows", []))
    print(render(result))
    if args.out:
        write_json(result, args.out)
        print(f"wrote {args.out}")
    return 0


def _epochs_per_run(items: list[str], runs: list[str]) -> dict[str, int]:
    """``--epochs``: one number for every run, or name=N pairs (every run named; a bare N is the default)."""
    default, per = None, {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            raise UserError(f"--epochs: expected N or name=N, got {item!r}") from None
        if n < 1:
            raise UserError(f"--epochs: epochs must be >= 1, got {item!r}")
        if sep:
            if name not in runs:
                raise UserError(f"--epochs: {name!r} is not one of the runs ({', '.join(runs)})")
            per[name] = n
        else:
            default = n
    missing = [r for r in runs if r not in per and default is None]
    if missing:
        raise UserError(f"--epochs: no epoch count for {', '.join(missing)}")
    return {r: per.get(r, default) for r in runs}


def _run_convergence(args: argparse.Namespace, log) -> dict:
    from isnet.bench.convergence import STANDARD, convergence_suite
    from isnet.methods.isnet import RECIPES

    recipes = args.recipes or list(RECIPES)
    unknown = [r for r in recipes if r.split("+")[0] not in RECIPES]
    if unknown:
        raise UserError(f"--recipes: unknown ISNet recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    epochs = _epochs_per_run(args.epochs, [STANDARD, *recipes])
    overrides = [f"train.device={args.device}", *args.overrides] + (
        [f"train.threads={args.threads}"] if args.threads else [])
    return convergence_suite(args.manifest, config=args.config, recipes=recipes, backbones=args.backbones,
                             size=args.sizes[0], seeds=args.seeds, epochs=epochs, tolerance=args.tolerance,
                             overrides=overrides, log=log)
