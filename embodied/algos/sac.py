"""SAC from scratch: a tanh-Gaussian MLP actor, an ensemble of Q critics (REDQ target), a
learned temperature, n-step replay over all envs, on the off-policy core (`offpolicy.py`,
where UTD and the tripwires are defined). The off-policy baseline (on locomotion too).

    embodied finetune algo=sac task=reach base=null
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embodied.algos.offpolicy import OffPolicyConfig, OffPolicyLearner
from embodied.core.errors import ConfigError
from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy


@dataclass
class SACConfig(OffPolicyConfig):
    alpha_lr: float = 3.0e-4
    init_alpha: float = 0.1
    target_entropy: float | None = None
    """None: -|A| (the action dim)."""
    backup_entropy: bool = True
    """Subtract alpha log pi(a'|s') in the target (WSRL turns it off)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_alpha <= 0:
            raise ConfigError(f"init_alpha must be > 0, got {self.init_alpha}")


def build(base: Any, cfg: SACConfig, obs_dim: int, action_dim: int) -> tuple[ChunkPolicy, None]:
    """A fresh squashed-Gaussian actor (SAC learns from scratch: `base` is ignored)."""
    config = PolicyConfig(kind="gaussian", squash=True, obs_dim=obs_dim, action_dim=action_dim,
                          horizon=1, n_action_steps=1,
                          net_kwargs={"hidden": [cfg.hidden, cfg.hidden], "activation": "relu",
                                      "state_dependent_std": True, "log_std_init": 0.0})
    return ChunkPolicy(config), None


LEARNER = OffPolicyLearner
