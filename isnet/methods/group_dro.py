"""Group DRO (Sagawa et al., 2020, "Distributionally robust neural networks"): minimise the worst group's loss.

The training images are split into groups by manifest columns, (site, label) by default: a group whose
images the shortcut does not help (e.g. a site where the class has no marker) has a high loss, and the
online algorithm of the paper moves weight onto it. On every step, for each group g present in the batch,
with ℓ_g its mean cross-entropy:

    log q_g ← log q_g + η · ℓ_g,   q = softmax(log q),   loss = Σ_g q_g · ℓ_g   (groups in the batch)

which is the paper's exponentiated-gradient update q_g ← q_g · exp(η ℓ_g) followed by normalisation, kept in
log space so it cannot overflow. η = 0.01, the paper's step size. The robust loss replaces the
cross-entropy (``ce_weight`` 0). A group is known once it appears in a batch; it enters at the largest
current log weight (an unseen group is treated as a worst one so far), and the weights are checkpointed.

Group columns are the batch keys ``label``, ``site`` and ``bias_present`` (the stress test's bias flag) or
any column of the manifest, looked up by the row.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from isnet.config.registry import MethodParams
from isnet.errors import UserError
from isnet.methods.base import LossTerms, Method, register

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.methods.base import TrainContext

#: group columns read from the batch itself rather than from the manifest
BATCH_COLUMNS = ("label", "site", "bias_present")


class GroupDROParams(MethodParams):
    """Group DRO: minimise the loss of the worst group of training images (groups from manifest columns)."""

    groups: list[str] = Field(default_factory=lambda: ["site", "label"],
                              description="columns whose value combination is a group: label, site, bias_present "
                                          "(stress test) or any manifest column")
    step_size: float = Field(0.01, gt=0, description="eta, the step size of the group-weight update (the paper's "
                                                     "0.01)")

    @field_validator("groups")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("groups needs at least one column, e.g. [site, label]")
        if len(set(v)) != len(v):
            raise ValueError(f"groups lists a column twice: {v}")
        return v


def update_group_weights(log_q: torch.Tensor, group_losses: torch.Tensor, present: torch.Tensor,
                         step_size: float) -> torch.Tensor:
    """One exponentiated-gradient step on the log weights of the groups present in the batch."""
    return log_q + step_size * torch.where(present, group_losses.detach(), torch.zeros_like(group_losses))


def group_losses(losses: torch.Tensor, group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss ℓ_g of each group, which groups are in the batch) from per-image losses and group indices."""
    counts = torch.bincount(group, minlength=n_groups).to(losses.dtype)
    sums = torch.zeros(n_groups, dtype=losses.dtype, device=losses.device).index_add(0, group, losses)
    return sums / counts.clamp_min(1), counts > 0


@register("group_dro", params=GroupDROParams)
class GroupDROMethod(Method):
    """Group DRO: the cross-entropy replaced by the weighted loss of the groups, weights on the worst group."""

    name = "group_dro"

    def __init__(self, cfg: "TrainConfig"):
        self.params = cfg.method.group_dro
        self.groups: dict[tuple, int] = {}
        self.log_q = torch.zeros(0)
        self._lookup: dict[str, dict[int, Any]] = {}

    def on_fit_start(self, trainer: "TrainContext") -> None:
        frame = getattr(trainer.manifest, "frame", None)
        for column in self.params.groups:
            if column in BATCH_COLUMNS:
                continue
            if frame is None or column not in frame.columns:
                where = getattr(trainer.manifest, "path", "the manifest")
                raise UserError(f"method.group_dro.groups names column {column!r}, which {where} does not have; "
                                f"use one of {', '.join(BATCH_COLUMNS)} or a manifest column")
            self._lookup[column] = dict(zip(frame["row"].astype(int), frame[column].astype(str)))

    def _values(self, batch: dict, column: str) -> list:
        if column in self._lookup:
            return [self._lookup[column][int(r)] for r in batch["row"]]
        if column not in batch:
            raise UserError(f"method.group_dro.groups names {column!r}, which this run's batches do not carry "
                            f"(bias_present exists only in a stress test)")
        value = batch[column]
        return [int(v) for v in value] if torch.is_tensor(value) else list(value)

    def group_index(self, batch: dict) -> torch.Tensor:
        """Each image's group, new groups added (at the largest current log weight)."""
        keys = list(zip(*(self._values(batch, c) for c in self.params.groups)))
        new = [k for k in dict.fromkeys(keys) if k not in self.groups]
        if new:
            start = float(self.log_q.max()) if self.log_q.numel() else 0.0
            for k in new:
                self.groups[k] = len(self.groups)
            self.log_q = torch.cat([self.log_q, torch.full((len(new),), start)])
        return torch.tensor([self.groups[k] for k in keys], dtype=torch.long)

    def weights(self) -> dict[tuple, float]:
        """The current weight q of each group seen so far."""
        q = torch.softmax(self.log_q, 0) if self.log_q.numel() else self.log_q
        return {k: float(q[i]) for k, i in self.groups.items()}

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        logits = out.logits.float()
        group = self.group_index(batch).to(logits.device)
        losses = F.cross_entropy(logits, batch["label"], reduction="none")
        means, present = group_losses(losses, group, self.log_q.numel())
        self.log_q = update_group_weights(self.log_q.to(logits.device), means, present, self.params.step_size)
        q = torch.softmax(self.log_q, 0)
        loss = (q * means * present).sum()  # Σ_g q_g ℓ_g with the updated q, as the paper
        worst = float(means[present].max().detach())
        return LossTerms(ce_weight=0.0, terms={"group_dro": loss},
                         metrics={"group_dro_worst_loss": worst, "group_dro_max_q": float(q.max()),
                                  "group_dro_entropy": float(-(q * q.clamp_min(1e-12).log()).sum() / math.log(
                                      max(2, q.numel())))})

    def state_dict(self) -> dict[str, Any]:
        return {"groups": [list(k) for k in self.groups], "log_q": self.log_q.cpu().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.groups = {tuple(k): i for i, k in enumerate(state["groups"])}
            self.log_q = torch.tensor(state["log_q"], dtype=torch.float32)
