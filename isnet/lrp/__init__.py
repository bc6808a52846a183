"""Differentiable layer-wise relevance propagation (LRP) for ISNet training.

``lrp_heatmaps(model, x, targets)`` runs one forward pass of a supported classifier (torchvision ResNet, DenseNet,
VGG, or a plain nn.Sequential CNN) and returns its logits together with LRP heatmaps (ε body rule, z^B first
layer by default, BatchNorm folded functionally) that are differentiable with respect to the weights.
"""
from .config import LRPConfig
from .heatmap import lrp_heatmaps, supports_model

__all__ = ["LRPConfig", "lrp_heatmaps", "supports_model"]
