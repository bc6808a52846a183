"""Measurement: classification metrics, relevance shares, calibration, bootstrap intervals and figures.

Below training in the layering (training logs these per epoch); the experiments that use them (stress tests,
external-site reports) live above training in :mod:`isnet.evaluate`.
"""
