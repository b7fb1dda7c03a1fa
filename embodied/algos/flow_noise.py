"""pi_RL Flow-Noise (arXiv 2510.25889): every Euler step stochastic with a learned,
bounded noise net (reference range [0.08, 0.16]); PPO clip 0.2 on the exact joint chain
log-likelihood (the true sum, not RLinf's division by K+1), Huber value loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embodied.algos.chain_ppo import ChainPPOConfig
from embodied.algos.reinflow import chain_policy
from embodied.policies.policy import ChunkPolicy


@dataclass
class FlowNoiseConfig(ChainPPOConfig):
    sampler: str = "learned_noise"
    sampler_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"sigma_min": 0.08, "sigma_max": 0.16})
    clip: float = 0.2
    value_loss: str = "huber"
    epochs: int = 3
    minibatch_size: int = 512
    actor_lr: float = 1e-5
    eval_every: int = 20


def build(base: ChunkPolicy | None, cfg: ChainPPOConfig, obs_dim: int, action_dim: int):
    return chain_policy(base, cfg), base
