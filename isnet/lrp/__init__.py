"""Differentiable layer-wise relevance propagation (LRP) for ISNet training.

``lrp_heatmaps(model, x, targets)`` runs one forward pass of a supported classifier (torchvision ResNet, DenseNet,
VGG, or a plain nn.Sequential CNN) and returns its logits together with LRP heatmaps (ε body rule, z^B first
layer by default, BatchNorm folded functionally) that are differentiable with respect to the weights.
``lrp_relevance_at(model, x, targets, layer, at)`` returns the relevance at the input or output of one module
(a latent feature map) instead.
"""
from .config import LRPConfig, run_lrp_config
from .heatmap import lrp_heatmaps, supports_model
from .latent import lrp_relevance_at

__all__ = ["LRPConfig", "run_lrp_config", "lrp_heatmaps", "lrp_relevance_at", "supports_model"]
