"""The template task: every hook a task fills in, on a tiny point-mass "reach" problem.

Copy this file to add a task. Hooks receive `sim`, the batched backend: `sim.field(name)`
is a live (num_envs, ...) torch tensor over an MjData field, writable for state fields
(qpos, qvel, ctrl, mocap_pos ...). Write every hook on the whole batch with torch ops and
draw randomness only from the generator passed to `reset`, so that the same seed gives the
same rollout and the task runs unchanged on any backend.

`reach` is also a real, registered task: the easiest one, for fast end-to-end tests; its
expert is `embodied.data.experts.ReachExpert`.
"""

from __future__ import annotations

from typing import Any

import mujoco
import torch

from embodied.core.paths import ASSETS_DIR
from embodied.envs.registry import register_task
from embodied.envs.task import Task


@register_task("reach")
class Reach(Task):
    """Drive a point mass to a random goal on a table.

    Observation (8): point xy, point velocity xy, goal xy, goal - point xy.
    Action (2): force on x and y, in [-1, 1]. Success: within `goal_radius` of the goal.
    """

    description = "point mass reaches a random goal (template task, fastest to learn)"
    # Class attributes are the task's options: `make_env("reach", goal_radius=0.03)`.
    frame_skip = 4  # physics substeps per env step: 0.04 s, 25 Hz control
    max_episode_steps = 50
    cameras = ("top",)
    goal_radius: float = 0.02
    goal_range: float = 0.2
    reward_type: str = "dense"  # "dense": -distance; "sparse": success
    terminate_on_success: bool = True

    def build_model(self) -> mujoco.MjModel:
        return mujoco.MjModel.from_xml_path(str(ASSETS_DIR / "template" / "reach.xml"))

    def setup(self, sim: Any) -> None:
        # Per-env task state lives in tensors over the batch; model ids are looked up once.
        self._goal = torch.zeros((sim.num_envs, 2), dtype=torch.float64, device=sim.device)
        self._goal_site = sim.model.site("goal").id

    def reset(self, sim: Any, ids: torch.Tensor, generator: torch.Generator) -> None:
        n = len(ids)
        start = (torch.rand((n, 2), generator=generator, dtype=torch.float64) * 2 - 1) * 0.05
        goal = (torch.rand((n, 2), generator=generator, dtype=torch.float64) * 2 - 1)
        sim.field("qpos")[ids] = start.to(sim.device)
        sim.field("qvel")[ids] = 0.0
        self._goal[ids] = goal.to(sim.device) * self.goal_range

    def before_step(self, sim: Any) -> None:
        return None  # nothing of the pre-step state is needed by this reward

    def observe(self, sim: Any) -> torch.Tensor:
        pos, vel = sim.field("qpos"), sim.field("qvel")
        return torch.cat([pos, vel, self._goal, self._goal - pos], dim=-1)

    def _distance(self, sim: Any) -> torch.Tensor:
        return (self._goal - sim.field("qpos")).norm(dim=-1)

    def reward(self, sim: Any, action: torch.Tensor, before: Any) -> torch.Tensor:
        if self.reward_type == "sparse":
            return self.success(sim).to(torch.float64)
        return -self._distance(sim)

    def success(self, sim: Any) -> torch.Tensor:
        return self._distance(sim) < self.goal_radius

    def terminated(self, sim: Any) -> torch.Tensor:
        if self.terminate_on_success:
            return self.success(sim)
        return super().terminated(sim)

    def video_camera(self) -> str:
        return "top"
