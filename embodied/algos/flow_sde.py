"""pi_RL Flow-SDE (arXiv 2510.25889): the ODE chain converted to an SDE with the same
marginals (noise level a = 0.5). sampler=sde makes every step stochastic; sampler=sde_hybrid
draws one SDE step per chain and scores only that one (about 1/K of the update cost)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embodied.algos.reinflow import ReinFlowConfig, build

__all__ = ["FlowSDEConfig", "build"]


@dataclass
class FlowSDEConfig(ReinFlowConfig):
    sampler: str = "sde"
    sampler_kwargs: dict[str, Any] = field(default_factory=lambda: {"noise_level": 0.5})
    value_loss: str = "huber"
