"""DPPO (Ren et al. 2024): each fine-tuned denoising step is a Gaussian policy step.

Only the last K' steps train; the first K - K' run a frozen copy of the base (`frozen`
in the policy, saved with it). One PPO term per trained step, its advantage discounted by
gamma_denoise^(K'-1-k), its clip from an exponential schedule (1e-3 -> 1e-2; K' = 1 uses
the last clip instead of the public code's 0/0). DDIM with eta = 1 and std floors of 0.1
for sampling and scoring (the DDIM last step's own std is 0). A flow base works too with
a stochastic flow sampler (e.g. algo.sampler=sde).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embodied.algos.chain_ppo import ChainPPOConfig
from embodied.algos.reinflow import bc_reference, chain_policy
from embodied.core.errors import ConfigError
from embodied.policies.policy import ChunkPolicy


@dataclass
class DPPOConfig(ChainPPOConfig):
    sampler: str = "ddim"
    sampler_kwargs: dict[str, Any] = field(default_factory=lambda: {
        "eta": 1.0, "std_min": 0.1, "log_prob_std_min": 0.1})
    ratio: str = "per_step"
    finetune_steps: int | None = 2
    denoising_discount: float = 0.99
    clip: float = 0.01
    clip_first: float | None = 0.001
    epochs: int = 3
    minibatch_size: int = 512
    actor_lr: float = 1e-5
    eval_every: int = 20


def build(base: ChunkPolicy | None, cfg: ChainPPOConfig, obs_dim: int, action_dim: int):
    policy = chain_policy(base, cfg)  # validates the sampler against the base's kind
    k = policy.num_chain_steps
    k_ft = k if cfg.finetune_steps is None else cfg.finetune_steps
    if not 1 <= k_ft <= k:
        raise ConfigError(f"finetune_steps (K'={k_ft}) must be in [1, K={k}] denoising steps")
    policy = chain_policy(base, cfg, frozen_steps=k - k_ft)
    return policy, bc_reference(base, policy)
