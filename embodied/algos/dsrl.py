"""DSRL (arXiv 2506.15799): SAC over the initial noise x_0 of a frozen flow or diffusion
policy. The actor picks x_0 = noise_bound * tanh(u) for a whole chunk, the frozen base's
deterministic sampler maps (s, x_0) to the chunk, the env executes its Ta actions; the
critic is Q(s, x_0). One replay row per decision (reward: the chunk's summed reward,
discount gamma^Ta per row); no gradient ever reaches the base.

    embodied finetune algo=dsrl task=pick_place base=assets/base/pick_place_flow
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from embodied.algos.offpolicy import OffPolicyLearner
from embodied.algos.sac import SACConfig
from embodied.core.errors import ConfigError
from embodied.policies.noise_space import NoisePolicy


@dataclass
class DSRLConfig(SACConfig):
    noise_bound: float = 1.5
    """|x_0| <= noise_bound per dim (the base was trained on N(0, 1) noise)."""
    init_alpha: float = 0.01
    transitions: ClassVar[str] = "decision"


def build(base: Any, cfg: DSRLConfig, obs_dim: int, action_dim: int) -> tuple[NoisePolicy, None]:
    if base is None:
        raise ConfigError("dsrl steers a pretrained chunk policy: give base=<policy directory>")
    return NoisePolicy(base, cfg.noise_bound, cfg.hidden), None


LEARNER = OffPolicyLearner
