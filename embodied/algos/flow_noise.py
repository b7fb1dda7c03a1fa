"""pi_RL Flow-Noise (arXiv 2510.25889): every Euler step stochastic with a learned,
bounded noise net (reference range [0.08, 0.16]); PPO clip 0.2 on the exact joint chain
log-likelihood (the true sum, not RLinf's division by K+1), Huber value loss. The same
chain and update as ReinFlow; the settings differ."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embodied.algos.reinflow import ReinFlowConfig, build

__all__ = ["FlowNoiseConfig", "build"]


@dataclass
class FlowNoiseConfig(ReinFlowConfig):
    sampler_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"sigma_min": 0.08, "sigma_max": 0.16})
    value_loss: str = "huber"
