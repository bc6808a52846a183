"""Classifier backbones (and, later, the lung segmenter)."""

from isnet.models.classifier import build_classifier

__all__ = ["build_classifier"]
