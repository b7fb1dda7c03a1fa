"""pi_RL Flow-SDE (arXiv 2510.25889): the ODE chain converted to an SDE with the same
marginals (noise level a = 0.5). sampler=sde makes every step stochastic; sampler=sde_hybrid
draws one SDE step per chain and scores only that one (about 1/K of the update cost)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embodied.algos.chain_ppo import ChainPPOConfig
from embodied.algos.reinflow import chain_policy
from embodied.policies.policy import ChunkPolicy


@dataclass
class FlowSDEConfig(ChainPPOConfig):
    sampler: str = "sde"
    sampler_kwargs: dict[str, Any] = field(default_factory=lambda: {"noise_level": 0.5})
    clip: float = 0.2
    value_loss: str = "huber"
    epochs: int = 3
    minibatch_size: int = 512
    actor_lr: float = 1e-5
    eval_every: int = 20


def build(base: ChunkPolicy | None, cfg: ChainPPOConfig, obs_dim: int, action_dim: int):
    return chain_policy(base, cfg), base
