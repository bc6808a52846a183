"""Training methods that plug into the trainer through hooks (see ``isnet.methods.base``)."""

from isnet.methods.base import Method, StepOutput, build_methods, register
from isnet.methods.gwrp import gwrp
from isnet.methods.isnet_loss import (
    ISNetLossConfig,
    explain_targets,
    isnet_heatmap_loss,
    isnet_total_loss,
    lung_relevance_totals,
    tune_foreground_band,
)

from isnet.methods import isnet as _isnet  # noqa: E402,F401  (registers "isnet")
from isnet.methods.isnet import ISNetMethod  # noqa: E402

__all__ = ["ISNetMethod", "Method", "StepOutput", "build_methods", "register", "gwrp", "ISNetLossConfig", "explain_targets",
           "isnet_heatmap_loss", "isnet_total_loss", "lung_relevance_totals", "tune_foreground_band"]
