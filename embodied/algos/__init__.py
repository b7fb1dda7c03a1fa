"""Training algorithms. Fine-tuning algorithms are thin files over one PPO core
(`chain_ppo`): each has its config dataclass and a `build(base, cfg, obs_dim, action_dim)`
that returns (trainable policy, BC reference)."""

from __future__ import annotations

import importlib
import types
import typing
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
    "sac": "SACConfig",
    "dsrl": "DSRLConfig",
    "td3": "TD3Config",
}


def finetune_algorithm(name: str) -> tuple[ModuleType, type]:
    """(module, config class) of a fine-tuning algorithm."""
    if name not in FINETUNE_ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid: {sorted(FINETUNE_ALGORITHMS)}")
    module = importlib.import_module(f"embodied.algos.{name}")
    return module, getattr(module, FINETUNE_ALGORITHMS[name])


def check_setting_types(name: str, config_cls: type, settings: dict[str, Any]) -> None:
    """A ConfigError for a setting of the wrong scalar type, before the config's own checks
    compare it (a YAML `3e-5` is the string '3e-5' to PyYAML: YAML 1.1 floats need a dot)."""
    hints = typing.get_type_hints(config_cls)
    for field, value in settings.items():
        allowed = _scalar_types(hints.get(field))
        if allowed is None or value is None and type(None) in allowed:
            continue
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok:
            wanted = " or ".join(t.__name__ for t in allowed if t is not type(None))
            hint = (" (write floats with a dot, e.g. 3.0e-5: YAML reads 3e-5 as a string)"
                    if isinstance(value, str) and float in allowed else "")
            raise ConfigError(f"{name}: {field} must be {wanted}, got {value!r} "
                              f"({type(value).__name__}){hint}")


def _scalar_types(hint: Any) -> tuple[type, ...] | None:
    """The accepted types of a scalar field (float also takes int); None: not checked."""
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    scalars = (int, float, bool, str, type(None))
    if not all(m in scalars for m in members):
        return None
    return tuple(members) + ((int,) if float in members else ())


def make_finetune(name: str, base: Any, task: str, settings: dict[str, Any],
                  run_dir: str | Path, task_options: dict | None = None):
    """The run of algorithm `name` (ChainPPO, or the learner its module names as LEARNER)
    with config fields `settings` (unknown ones are an error naming the valid fields)."""
    from embodied.algos.chain_ppo import ChainPPO
    from embodied.core.seeding import seed_everything
    from embodied.envs import make_env
    from embodied.rollout import check_policy_fits

    module, config_cls = finetune_algorithm(name)
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"{name} has no settings {unknown}; valid: {sorted(known)}")
    check_setting_types(name, config_cls, settings)
    config = config_cls(**settings)
    probe = make_env(task, num_envs=1, **(task_options or {}))
    obs_dim, action_dim = probe.obs_dim, probe.action_dim
    probe.close()
    if base is not None:
        check_policy_fits(base.config, obs_dim, action_dim, task)
    # Fresh heads (noise, residual, critic) are initialised from the global generator.
    seed_everything(config.seed)
    policy, reference = module.build(base, config, obs_dim, action_dim)
    learner = getattr(module, "LEARNER", ChainPPO)  # off-policy algorithms name their own
    return learner(policy, task, config, run_dir, task_options, bc_reference=reference)
