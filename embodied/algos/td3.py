"""TD3 (Fujimoto et al. 2018) on the off-policy core: a deterministic tanh actor,
exploration noise on the executed action, target policy smoothing (clipped noise on the
target action), delayed actor and target-actor updates, REDQ ensemble critics. From scratch
here; ResFiT's residual builds on the same core.

    embodied finetune algo=td3 task=reach base=null
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from embodied.algos.offpolicy import OffPolicyConfig, OffPolicyLearner
from embodied.algos.sac import build as _sac_actor
from embodied.core.errors import ConfigError
from embodied.policies.policy import ChunkPolicy


@dataclass
class TD3Config(OffPolicyConfig):
    actor_every: int = 2
    """Delayed policy updates: one actor (and target-actor) step per 2 critic steps."""
    explore_std: float = 0.1
    target_noise: float = 0.2
    target_noise_clip: float = 0.5
    actor: ClassVar[str] = "td3"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.explore_std < 0 or self.target_noise < 0 or self.target_noise_clip < 0:
            raise ConfigError("explore_std, target_noise and target_noise_clip must be >= 0")


def build(base: Any, cfg: TD3Config, obs_dim: int, action_dim: int) -> tuple[ChunkPolicy, None]:
    """A fresh tanh actor (its mean is TD3's deterministic action; `base` is ignored)."""
    return _sac_actor(base, cfg, obs_dim, action_dim)


LEARNER = OffPolicyLearner
