"""Seeds derived from (run seed, epoch), so a resumed run replays exactly the epochs it had not finished."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed per epoch (independent of how many epochs ran before a restart)."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**31 - 1)
