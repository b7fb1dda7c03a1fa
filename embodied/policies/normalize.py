"""Normalisation statistics that live in the policy and are saved with its weights."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


class Normalizer(nn.Module):
    """x_norm = (x - shift) / scale, per feature dim; the buffers go into the checkpoint.

    mode "mean_std": shift = mean, scale = std (observations).
    mode "min_max": maps [min, max] to [-1, 1] (actions, so generative targets are bounded).
    Dims with (almost) no spread get scale 1, so constant features do not blow up.
    """

    def __init__(self, dim: int, mode: str = "mean_std") -> None:
        super().__init__()
        if mode not in ("mean_std", "min_max", "identity"):
            raise ValueError(f"normalizer mode must be mean_std, min_max or identity, not {mode!r}")
        self.mode = mode
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def fit(self, stats: Mapping[str, np.ndarray | torch.Tensor]) -> Normalizer:
        """Set shift/scale from dataset statistics (keys mean, std, min, max)."""
        def get(key: str) -> torch.Tensor:
            return torch.as_tensor(np.asarray(stats[key]), dtype=torch.float32).reshape(-1)

        if self.mode == "mean_std":
            shift, scale = get("mean"), get("std")
        elif self.mode == "min_max":
            low, high = get("min"), get("max")
            shift, scale = (high + low) / 2, (high - low) / 2
        else:
            return self
        scale = torch.where(scale < 1e-6, torch.ones_like(scale), scale)
        self.shift.copy_(shift)
        self.scale.copy_(scale)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift
