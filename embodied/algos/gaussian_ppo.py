"""Plain PPO with a Gaussian MLP policy from scratch: the baseline every fine-tuning
algorithm should beat (one action per decision, state-independent log-std)."""

from __future__ import annotations

from dataclasses import dataclass, field

from embodied.algos.ppo import PPOConfig
from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy


@dataclass
class GaussianPPOConfig(PPOConfig):
    num_envs: int = 64
    decisions_per_iteration: int = 64
    clip: float = 0.2
    epochs: int = 5
    minibatch_size: int = 1024
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    eval_every: int = 20
    n_obs_steps: int = 1
    """Observation history of the fresh policy (its encoder's input)."""
    cameras: list[str] = field(default_factory=list)
    """Camera images the fresh policy sees besides the state (pixel PPO from scratch)."""
    image_size: int = 64


def build(base: ChunkPolicy | None, cfg: PPOConfig, obs_dim: int, action_dim: int):
    """A fresh policy (identity normalisers: the env's own observation scale); `base` is
    ignored."""
    config = PolicyConfig(kind="gaussian", obs_dim=obs_dim, action_dim=action_dim,
                          horizon=1, n_action_steps=1, encoder_out_dim=64,
                          n_obs_steps=cfg.n_obs_steps, cameras=list(cfg.cameras),
                          image_size=cfg.image_size)
    return ChunkPolicy(config), None
