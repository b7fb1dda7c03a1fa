"""ResiP (Ankile et al. 2024): PPO on a per-step Gaussian residual over a frozen BC base.

Reference: clip 0.2, GAE gamma 0.999 lambda 0.95, normalised advantages, KL early stop 0.1,
actor lr 3e-4, critic lr 5e-3, residual scale 0.1, log-std -1, sparse reward. Decisions are
single env steps, so gamma is per step here. The critic sees the clipped normalised
observation (the paper also feeds it the base action; ours does not, since the base action
is not a function of the stored observation alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embodied.algos.ppo import PPOConfig
from embodied.core.errors import ConfigError
from embodied.policies.policy import ChunkPolicy
from embodied.policies.residual import ResidualPolicy


@dataclass
class ResiPConfig(PPOConfig):
    decisions_per_iteration: int = 64
    gamma: float = 0.999
    clip: float = 0.2
    epochs: int = 3
    minibatch_size: int = 1024
    target_kl: float | None = 0.1
    actor_lr: float = 3e-4
    critic_lr: float = 5e-3
    eval_every: int = 20
    residual_hidden: list[int] = field(default_factory=lambda: [256, 256])
    residual_scale: float = 0.1
    residual_log_std: float = -1.0


def build(base: ChunkPolicy | None, cfg: ResiPConfig, obs_dim: int, action_dim: int):
    if base is None:
        raise ConfigError("ResiP trains a residual over a pretrained base: pass base=<dir>")
    policy = ResidualPolicy(base, tuple(cfg.residual_hidden), cfg.residual_scale,
                            cfg.residual_log_std)
    return policy, None
