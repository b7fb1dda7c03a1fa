"""The hook a VecEnv calls to randomise its envs; `embodied.sim2real.randomization` fills it.

The VecEnv knows only this protocol, so `envs` never imports `sim2real` (which sits above
it). Every method works on the whole batch with torch ops and draws only from the
generator it is given, so the same seed gives the same draws and a GPU backend runs it
unchanged. One randomizer serves one env.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Randomizer(Protocol):
    def setup(self, sim: Any, action_dim: int) -> None:
        """Called once with the env's backend: cache nominal model values, allocate state."""

    def on_reset(self, sim: Any, ids: torch.Tensor, generator: torch.Generator) -> None:
        """Envs `ids` start an episode: redraw their model fields from the nominal values
        and clear their per-env state (action queues). Runs before the task's reset."""

    def observe(self, obs: dict[str, torch.Tensor],
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The observation the agent sees (rows of some envs, or all of them)."""

    def act(self, actions: torch.Tensor) -> torch.Tensor:
        """The actions (num_envs, action_dim) applied this step, given those commanded."""
