"""Seeds derived from (run seed, epoch), so a resumed run replays exactly the epochs it had not finished.

Python's global ``random`` is deliberately left alone: nothing in training draws from it (MONAI transforms
have their own seeded states, data-loader workers are seeded by torch), and MLflow draws run names from it,
so seeding it gave every run without ``--run-name`` the same name.
"""

from __future__ import annotations

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed per epoch (independent of how many epochs ran before a restart)."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**31 - 1)
