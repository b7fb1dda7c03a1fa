"""ReinFlow (arXiv 2505.22094): the flow policy's Euler chain made stochastic by a learned,
tanh-bounded noise head; PPO on the joint log-likelihood of the chain.

Paper reference: clip 0.01, actor lr 4.5e-5, noise bounds [0.05, 0.14] (manipulation) or
[0.10, 0.24] (locomotion). Our defaults (clip 0.2, lr 1e-5, bounds [0.1, 0.2], minibatch 512)
are what fine-tuned our shipped bases fastest on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embodied.algos.chain_ppo import ChainPPOConfig
from embodied.policies.policy import ChunkPolicy


@dataclass
class ReinFlowConfig(ChainPPOConfig):
    sampler: str = "learned_noise"
    sampler_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"sigma_min": 0.1, "sigma_max": 0.2})
    clip: float = 0.2
    epochs: int = 3
    minibatch_size: int = 512
    actor_lr: float = 1e-5
    eval_every: int = 20


def build(base: ChunkPolicy | None, cfg: ChainPPOConfig, obs_dim: int, action_dim: int):
    """(trainable policy, BC reference): the base with a stochastic sampler and, for
    learned noise, a fresh noise head."""
    policy = chain_policy(base, cfg)
    return policy, bc_reference(base, policy)


def bc_reference(base: ChunkPolicy, policy: ChunkPolicy) -> ChunkPolicy:
    """The frozen base for the BC regulariser, run with the fine-tuned policy's own sampler
    and K (so "the same x0" feeds chains of the same length and time grid)."""
    c = policy.config
    return base.with_overrides(sampler=c.sampler, sampler_kwargs=c.sampler_kwargs,
                               num_steps=c.num_steps, noise_head=c.noise_head, frozen_steps=0)


def chain_policy(base: ChunkPolicy | None, cfg: ChainPPOConfig,
                 **overrides: Any) -> ChunkPolicy:
    """The base re-built with the config's sampler (shared by the chain algorithms)."""
    if base is None:
        from embodied.core.errors import ConfigError

        raise ConfigError("this algorithm fine-tunes a pretrained policy: pass base=<policy dir>")
    overrides = {"sampler": cfg.sampler, "sampler_kwargs": cfg.sampler_kwargs,
                 "noise_head": cfg.sampler == "learned_noise", **overrides}
    if cfg.num_steps is not None:
        overrides["num_steps"] = cfg.num_steps
    return base.with_overrides(**overrides)
