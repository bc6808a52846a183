"""Training methods that plug into the trainer through hooks (see ``isnet.methods.base``)."""

from isnet.methods.base import (LOSS_RULE, LossTerms, Method, StepOutput, build_methods, combine_losses,
                                compose_objective, register, unregister)
from isnet.methods.gwrp import gwrp
from isnet.methods.isnet_loss import (
    ISNetLossConfig,
    ISNetLossFields,
    explain_targets,
    isnet_heatmap_loss,
    isnet_loss_terms,
    isnet_total_loss,
    image_relevance_totals,
    lung_relevance_totals,
    tune_foreground_band,
)

# importing a method module registers it under its name
from isnet.methods.isnet import ISNetMethod  # noqa: E402
from isnet.methods.bg_swap import BgSwapMethod  # noqa: E402
from isnet.methods.consistency import BgConsistencyMethod, consistency_divergence  # noqa: E402
from isnet.methods.group_dro import GroupDROMethod  # noqa: E402
from isnet.methods.masked_input import MaskedInputMethod  # noqa: E402
from isnet.methods.reldrop import RelDropMethod  # noqa: E402
from isnet.methods.rrr import RRRMethod, rrr_penalty  # noqa: E402
from isnet.methods.sgdrop import SGDropMethod  # noqa: E402

__all__ = ["BgSwapMethod", "BgConsistencyMethod", "consistency_divergence", "GroupDROMethod", "ISNetMethod",
           "MaskedInputMethod", "RelDropMethod", "RRRMethod", "SGDropMethod", "rrr_penalty", "LOSS_RULE",
           "LossTerms", "Method", "StepOutput", "combine_losses", "compose_objective", "build_methods", "register",
           "unregister", "gwrp", "ISNetLossConfig", "ISNetLossFields", "explain_targets", "isnet_heatmap_loss",
           "isnet_loss_terms", "isnet_total_loss", "image_relevance_totals", "lung_relevance_totals",
           "tune_foreground_band"]
