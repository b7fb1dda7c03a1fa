"""A task: one MuJoCo model plus batched reset / observation / reward / success hooks.

Every hook works on the whole batch of envs at once, through `sim`, a backend whose
`field(name)` returns a (num_envs, ...) torch tensor over an MjData field. Hooks use torch
ops only, so the same task runs on the CPU batch backend and on a GPU backend unchanged.
See `tasks/template.py` for a task that fills in every hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import mujoco
import torch

from embodied.core.errors import ConfigError


@dataclass(frozen=True)
class CameraSpec:
    name: str
    height: int = 96
    width: int = 96


class Task:
    """Base class of batched tasks. Subclasses set the class attributes and fill the hooks.

    Class attributes:
        name: registry name, filled in by `@register_task`.
        frame_skip: physics substeps per env step.
        max_episode_steps: truncation horizon (env steps).
        forward_stage: forward stages recomputed after each step. `mjSTAGE_NONE` keeps
            derived fields (xpos, ...) from before the last substep, exactly as gymnasium's
            MuJoCo envs see them; `mjSTAGE_VEL` makes positions, velocities and sensors
            current (what a task that reads sites or sensors wants).
        cameras: camera names available for image observations.
    """

    name: ClassVar[str] = ""
    frame_skip: ClassVar[int] = 1
    max_episode_steps: ClassVar[int] = 1000
    forward_stage: ClassVar[int] = int(mujoco.mjtStage.mjSTAGE_VEL)
    cameras: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    @classmethod
    def option_names(cls) -> list[str]:
        """The task's options: its public, non-callable class attributes (inherited too)."""
        names = {k for c in cls.__mro__ for k, v in vars(c).items()
                 if not k.startswith("_") and not callable(v)
                 and not isinstance(v, (property, classmethod, staticmethod))}
        return sorted(names)

    def __init__(self, **options: Any) -> None:
        known = self.option_names()
        for key, value in options.items():
            if key not in known:  # hooks (methods) are not options either
                raise ConfigError(
                    f"task {self.name!r} has no option {key!r}; options it takes: {known}"
                )
            setattr(self, key, value)

    # --- hooks --------------------------------------------------------------------------
    def build_model(self) -> mujoco.MjModel:
        """Compile the MuJoCo model (from an MJCF file in assets/, or an MjSpec)."""
        raise NotImplementedError

    def setup(self, sim: Any) -> None:
        """Called once with the backend: look up ids, cache constants, bind fields."""

    def reset(self, sim: Any, ids: torch.Tensor, generator: torch.Generator) -> None:
        """Write the initial state (qpos, qvel, ...) of envs `ids`; the env runs forward."""
        raise NotImplementedError

    def action_to_ctrl(self, sim: Any, action: torch.Tensor) -> torch.Tensor:
        """Map actions in [-1, 1] to `ctrl`; default: affine onto each actuator's ctrlrange."""
        low, high = self._ctrl_low_high(sim)
        return low + (action + 1.0) * 0.5 * (high - low)

    def before_step(self, sim: Any) -> Any:
        """Snapshot what the reward needs from the pre-step state (e.g. x position)."""
        return None

    def after_step(self, sim: Any) -> None:
        """Called after the physics step, before observe/reward (e.g. post-step quantities)."""

    def after_reset(self, sim: Any, ids: torch.Tensor) -> None:
        """Called after envs `ids` were reset and their forward pass ran."""

    def observe(self, sim: Any) -> torch.Tensor:
        """State observation, (num_envs, obs_dim)."""
        raise NotImplementedError

    def reward(self, sim: Any, action: torch.Tensor, before: Any) -> torch.Tensor:
        """Reward of the step just taken, (num_envs,)."""
        raise NotImplementedError

    def terminated(self, sim: Any) -> torch.Tensor:
        """Bool (num_envs,): the episode ended (failure, or success where the task ends it)."""
        return torch.zeros(sim.num_envs, dtype=torch.bool, device=sim.device)

    def success(self, sim: Any) -> torch.Tensor:
        """Bool (num_envs,): the task is solved in the current state."""
        return torch.zeros(sim.num_envs, dtype=torch.bool, device=sim.device)

    # --- helpers ------------------------------------------------------------------------
    def _ctrl_low_high(self, sim: Any) -> tuple[torch.Tensor, torch.Tensor]:
        cached = getattr(self, "_ctrl_range_cache", None)
        if cached is None:
            rng = torch.as_tensor(sim.model.actuator_ctrlrange, dtype=torch.float64)
            limited = torch.as_tensor(sim.model.actuator_ctrllimited, dtype=torch.bool)
            low = torch.where(limited, rng[:, 0], torch.full_like(rng[:, 0], -1.0))
            high = torch.where(limited, rng[:, 1], torch.full_like(rng[:, 1], 1.0))
            cached = (low.to(sim.device), high.to(sim.device))
            self._ctrl_range_cache = cached
        return cached
