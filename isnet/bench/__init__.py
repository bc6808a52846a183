"""``isnet bench``: time and peak memory of training steps, heatmaps and data loading, side by side.

Modules: :mod:`.timing` (warm-up, interleaved repeats, median and spread), :mod:`.memory` (peak RSS above the
process baseline on CPU, allocator peak on CUDA, one fresh subprocess per configuration), :mod:`.steps` (the
measured operations, built from the trainer and the registered methods), :mod:`.suites` (train-step and
loader suites) and :mod:`.report` (table and JSON).
"""
