"""The bias-injection stress test (docs/design.md, "Evaluation"): does a method fall for a background shortcut?

For every cell (method spec, correlation strength, seed) a classifier is trained with ``isnet.train.run.train``
on the training split with the bias injected into target-class images with probability ``strength`` (and
never into the others), as an MLflow run nested under one parent run. It is then scored on the test split
three ways — clean (no bias), aligned (bias on every target-class image) and flipped (bias on every image of
the other classes, none on the target) — and explained with LRP on clean and biased images.

Results go to ``<out_dir>/results.csv`` (tidy: one row per cell, test set and metric), the child runs'
metrics, ``drop_vs_strength.png``, per-cell heatmap figures and ``summary.md``. Cells already in the CSV, or
evaluated in MLflow under the same parent run, are skipped when the sweep runs again.

Modules: :mod:`.config` (the stress-test config), :mod:`.cells` (method specs, cells, bookkeeping),
:mod:`.scoring` (one cell's test sets and metrics), :mod:`.sweep` (``StressTest``), :mod:`.summary`.
"""

from isnet.evaluate.stress.cells import parse_method_spec
from isnet.evaluate.stress.config import BiasConfig, StressConfig, load_stress_config
from isnet.evaluate.stress.sweep import StressTest

__all__ = ["BiasConfig", "StressConfig", "StressTest", "load_stress_config", "parse_method_spec"]
