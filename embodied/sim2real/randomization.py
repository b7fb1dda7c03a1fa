"""The sim side of sim-to-real: domain randomisation, observation noise, action latency.

    from embodied.sim2real.randomization import DomainRandomizer
    env = make_env("push_cube", num_envs=64, randomizer=DomainRandomizer(
        scale={"mass": [0.8, 1.2], "friction": [0.7, 1.3]}, obs_noise_std=0.01,
        action_delay=1))

or `embodied finetune ... randomization=default` (configs/randomization/*.yaml), which
randomises the training env only: evaluation measures the policy on the nominal task.

- `scale`: each named quantity of each env is its nominal model value times U[low, high],
  drawn when that env resets, per element (each body, geom, dof, actuator; the timestep
  per env), from the env's generator. Draws always start from the nominal model, so scales
  never compound across resets. The names (`SCALED`):
    mass           body_mass and body_inertia by the same factor (density, not shape)
    friction       geom_friction: sliding, torsional and rolling together
    damping        dof_damping (a dof without damping stays undamped)
    actuator_gain  actuator_gainprm[0] and biasprm[1:3] by the same factor: the actuator
                   makes that much more or less force for the same ctrl and state (a motor's
                   gain, a position servo's kp and kv; its setpoint is unchanged)
    timestep       opt.timestep, so the control period (frame_skip substeps) varies too
- `obs_noise_std`: Gaussian noise N(0, std^2) added to `obs["state"]` of every observation
  the env returns (final observations too, so bootstrapping sees what the policy sees);
  images are left alone.
- `action_delay`: each env applies the action commanded k steps earlier (a per-env FIFO).
  When an env resets, its queue is refilled with the zero action, the middle of each
  actuator's range in the [-1, 1] action space, so the first k actions of an episode are
  zero and nothing of the previous episode leaks into the next.

Everything is a batched torch op on the backend's device with index tensors of the envs
that reset, no loop over envs, so a GPU backend runs it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from embodied.core.errors import ConfigError


@dataclass(frozen=True)
class _Target:
    field: str                    # a model field the backend has per env (model_field)
    columns: slice | None = None  # the trailing columns scaled; None: the whole element


# Name -> the model fields one draw per element scales (the first field sets the elements).
SCALED: dict[str, tuple[_Target, ...]] = {
    "mass": (_Target("body_mass"), _Target("body_inertia")),
    "friction": (_Target("geom_friction"),),
    "damping": (_Target("dof_damping"),),
    "actuator_gain": (_Target("actuator_gainprm", slice(0, 1)),
                      _Target("actuator_biasprm", slice(1, 3))),
    "timestep": (_Target("opt.timestep"),),
}
OPTIONS = ("scale", "obs_noise_std", "action_delay")


class DomainRandomizer:
    """The `embodied.envs.randomization.Randomizer` of the sim2real settings (one per env)."""

    def __init__(self, scale: dict[str, Any] | None = None, obs_noise_std: float = 0.0,
                 action_delay: int = 0) -> None:
        unknown = sorted(set(scale or {}) - set(SCALED))
        if unknown:
            raise ConfigError(f"randomization.scale has no {unknown}; valid: {list(SCALED)}")
        self.scale = {name: _range(name, value) for name, value in (scale or {}).items()}
        if not isinstance(obs_noise_std, (int, float)) or obs_noise_std < 0:
            raise ConfigError(f"randomization.obs_noise_std must be a number >= 0 (the std of "
                              f"the noise on obs['state']), got {obs_noise_std!r}")
        if isinstance(action_delay, bool) or not isinstance(action_delay, int) \
                or action_delay < 0:
            raise ConfigError(f"randomization.action_delay must be an integer >= 0 (env "
                              f"steps), got {action_delay!r}")
        self.obs_noise_std = float(obs_noise_std)
        self.action_delay = action_delay
        self._sim: Any = None

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> DomainRandomizer:
        """From a `configs/randomization/*.yaml` mapping (None: randomise nothing)."""
        config = dict(config or {})
        unknown = sorted(set(config) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"randomization has no options {unknown}; valid: {list(OPTIONS)}")
        return cls(**config)

    # --- the Randomizer hook ------------------------------------------------------------
    def setup(self, sim: Any, action_dim: int) -> None:
        if self._sim is not None and self._sim is not sim:
            raise ValueError("this DomainRandomizer already serves another env: build one "
                             "per env (DomainRandomizer.from_config(config))")
        self._sim = sim
        fields = {t.field for name in self.scale for t in SCALED[name]}
        # Nominal values from the model the backend was built with, which per-env writes
        # leave alone: a second setup cannot take randomised values for nominal ones.
        self._nominal = {f: _nominal(sim, f) for f in fields}
        self._fields = {f: sim.model_field(f) for f in fields}
        self._set_const = any(sim.needs_set_const(f) for f in fields)
        self._queue = torch.zeros((self.action_delay, sim.num_envs, action_dim),
                                  dtype=torch.float64, device=sim.device)

    def on_reset(self, sim: Any, ids: torch.Tensor, generator: torch.Generator) -> None:
        for name, (low, high) in self.scale.items():
            targets = SCALED[name]
            first = self._fields[targets[0].field]
            draw = torch.rand((ids.shape[0], *first.shape[1:2]), generator=generator,
                              dtype=first.dtype, device=first.device)
            factor = low + (high - low) * draw  # (n,) or (n, elements)
            for target in targets:
                field, nominal = self._fields[target.field], self._nominal[target.field]
                cols = target.columns or slice(None)
                view = nominal[..., cols] if target.columns else nominal
                shaped = factor.reshape(factor.shape + (1,) * (field.dim() - factor.dim()))
                if target.columns:
                    field[ids, ..., cols] = view * shaped
                else:
                    field[ids] = view * shaped
        if self._set_const:
            sim.set_const(ids)
        if self.action_delay:
            self._queue[:, ids] = 0.0

    def observe(self, obs: dict[str, torch.Tensor],
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        if not self.obs_noise_std:
            return obs  # no draw: the generator's stream stays what it is without noise
        state = obs["state"]
        noise = torch.randn(state.shape, generator=generator, dtype=state.dtype,
                            device=state.device)
        return {**obs, "state": state + self.obs_noise_std * noise}

    def act(self, actions: torch.Tensor) -> torch.Tensor:
        if not self.action_delay:
            return actions
        applied = self._queue[0]
        self._queue = torch.cat([self._queue[1:], actions[None].to(self._queue.dtype)])
        return applied

    def __repr__(self) -> str:
        return (f"DomainRandomizer(scale={self.scale}, obs_noise_std={self.obs_noise_std}, "
                f"action_delay={self.action_delay})")


def _range(name: str, value: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0 < low <= high:
        raise ConfigError(f"randomization.scale.{name} must be [low, high] with "
                          f"0 < low <= high (factors of the nominal value), got {value!r}")
    return low, high


def _nominal(sim: Any, field: str) -> torch.Tensor:
    model = sim.model
    value = getattr(model.opt, field[4:]) if field.startswith("opt.") else getattr(model, field)
    return torch.as_tensor(value, dtype=torch.float64, device=sim.device).clone()
