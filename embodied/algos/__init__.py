"""Training algorithms. Fine-tuning algorithms are thin files over one PPO core
(`chain_ppo`): each has its config dataclass and a `build(base, cfg, obs_dim, action_dim)`
that returns (trainable policy, BC reference)."""

from __future__ import annotations

import importlib
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Any

from embodied.core.errors import ConfigError

FINETUNE_ALGORITHMS = {
    "reinflow": "ReinFlowConfig",
    "flow_noise": "FlowNoiseConfig",
    "flow_sde": "FlowSDEConfig",
    "dppo": "DPPOConfig",
    "resip": "ResiPConfig",
    "gaussian_ppo": "GaussianPPOConfig",
}


def finetune_algorithm(name: str) -> tuple[ModuleType, type]:
    """(module, config class) of a fine-tuning algorithm."""
    if name not in FINETUNE_ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid: {sorted(FINETUNE_ALGORITHMS)}")
    module = importlib.import_module(f"embodied.algos.{name}")
    return module, getattr(module, FINETUNE_ALGORITHMS[name])


def make_finetune(name: str, base: Any, task: str, settings: dict[str, Any],
                  run_dir: str | Path, task_options: dict | None = None):
    """The ChainPPO run of algorithm `name` with config fields `settings` (unknown ones are
    an error naming the valid fields)."""
    from embodied.algos.chain_ppo import ChainPPO
    from embodied.core.seeding import seed_everything
    from embodied.envs import make_env
    from embodied.rollout import check_policy_fits

    module, config_cls = finetune_algorithm(name)
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"{name} has no settings {unknown}; valid: {sorted(known)}")
    config = config_cls(**settings)
    probe = make_env(task, num_envs=1, **(task_options or {}))
    obs_dim, action_dim = probe.obs_dim, probe.action_dim
    probe.close()
    if base is not None:
        check_policy_fits(base.config, obs_dim, action_dim, task)
    # Fresh heads (noise, residual, critic) are initialised from the global generator.
    seed_everything(config.seed)
    policy, reference = module.build(base, config, obs_dim, action_dim)
    return ChainPPO(policy, task, config, run_dir, task_options, bc_reference=reference)
