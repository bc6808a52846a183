"""Evaluation: classification metrics, stress tests and external-site reports."""
