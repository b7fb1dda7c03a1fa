"""One seed for every random generator a run uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators: weights initialised outside an
    explicit generator (fresh heads, critics, nets) then come from the run's config."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
