"""Manipulation tasks on a Cartesian gantry with a parallel two-finger gripper.

All three share one robot (`assets/manipulation/gantry.xml`): x, y, z slide joints driven by
stiff position servos (gravity-compensated), carrying two finger slides driven by position
servos. Objects are free bodies moved only by contact with the fingers; the goal markers
and the peg's hole block are mocap bodies (visual marker / fixed fixture) placed per env.

Action (4,), each in [-1, 1]:
    [0:3]  end-effector delta: the servo target moves by `action * max_delta` metres per step
           (per axis), clamped to the workspace box and to `max_lead` from the current ee
           position (no wind-up while pushing against something).
    [3]    gripper: -1 fully open (8 cm), +1 closed (the finger servo target lies 1 cm past
           closed, so a held object is squeezed); in between, a proportional finger target.

Observation (26,) float, the same layout for every task; `Task.obs_layout` names the slices:
    ee_pos 0:3, gripper 3:4 (finger opening, m), obj_pos 4:7, obj_quat 7:11 (w >= 0),
    goal 11:14, obj_rel_ee 14:17 (obj - ee), goal_rel_obj 17:20 (goal - obj),
    ee_vel 20:23, obj_vel 23:26 (linear)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import mujoco
import torch

from embodied.core.errors import ConfigError
from embodied.core.paths import ASSETS_DIR
from embodied.envs.registry import register_task
from embodied.envs.task import Task

OBS_LAYOUT: dict[str, slice] = {
    "ee_pos": slice(0, 3),
    "gripper": slice(3, 4),
    "obj_pos": slice(4, 7),
    "obj_quat": slice(7, 11),
    "goal": slice(11, 14),
    "obj_rel_ee": slice(14, 17),
    "goal_rel_obj": slice(17, 20),
    "ee_vel": slice(20, 23),
    "obj_vel": slice(23, 26),
}
OBS_DIM = 26
FINGER_OPEN = 0.04  # finger slide range: each pad's inner face is `q` from the centre line
FINGER_SQUEEZE = -0.01  # "closed" servo target lies past the joint limit: a held part is squeezed


class _GantryTask(Task):
    """Shared robot, action mapping, observation and reward plumbing of the three tasks."""

    xml_file: ClassVar[str] = ""
    object_body: ClassVar[str] = "cube"
    goal_body: ClassVar[str] = "goal"
    frame_skip = 20  # dt 2 ms x 20 = 25 Hz control
    max_episode_steps = 150
    cameras = ("front", "wrist", "top", "video")
    action_dim: ClassVar[int] = 4
    obs_layout: ClassVar[dict[str, slice]] = OBS_LAYOUT

    reward_type: str = "sparse"
    """"sparse": 1.0 on success steps, else 0. "dense": a shaped reward in [0, 1]."""
    terminate_on_success: bool = True
    max_delta: float = 0.015
    """Metres the ee target moves per step at |action| = 1 (per axis)."""
    max_lead: float = 0.03
    """How far the servo target may lead the measured ee position (limits pushing force)."""
    workspace_low: tuple[float, float, float] = (-0.25, -0.25, 0.014)
    workspace_high: tuple[float, float, float] = (0.25, 0.25, 0.30)
    home: tuple[float, float, float] = (0.0, 0.0, 0.15)
    home_noise: float = 0.02

    def build_model(self) -> mujoco.MjModel:
        return mujoco.MjModel.from_xml_path(str(ASSETS_DIR / "manipulation" / self.xml_file))

    def video_camera(self) -> str:
        return "video"

    # --- setup / reset ------------------------------------------------------------------
    def setup(self, sim: Any) -> None:
        m, n, dev = sim.model, sim.num_envs, sim.device

        def joint(name: str) -> tuple[int, int]:
            j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
            return int(m.jnt_qposadr[j]), int(m.jnt_dofadr[j])

        self._q_ee = [joint(a)[0] for a in ("x", "y", "z")]
        self._v_ee = [joint(a)[1] for a in ("x", "y", "z")]
        self._q_fingers = [joint("finger_l")[0], joint("finger_r")[0]]
        self._q_obj, self._v_obj = joint(self.object_body)
        body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, self.goal_body)
        self._mocap = int(m.body_mocapid[body])
        geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, self.object_body)
        self._obj_half = torch.as_tensor(m.geom_size[geom], dtype=torch.float64, device=dev)
        f64 = {"dtype": torch.float64, "device": dev}
        self._low = torch.tensor(self.workspace_low, **f64)
        self._high = torch.tensor(self.workspace_high, **f64)
        self._target = torch.zeros((n, 3), **f64)  # servo target of the ee, kept per env
        self._goal = torch.zeros((n, 3), **f64)
        self._ee_cols = torch.tensor(self._q_ee, device=dev)
        self._finger_cols = torch.tensor(self._q_fingers, device=dev)
        if self.reward_type not in ("sparse", "dense"):
            raise ConfigError(
                f"{self.name}: reward_type must be 'sparse' or 'dense', got {self.reward_type!r}")

    def reset(self, sim: Any, ids: torch.Tensor, generator: torch.Generator) -> None:
        n = len(ids)
        qpos, ctrl = sim.field("qpos"), sim.field("ctrl")
        home = torch.tensor(self.home, dtype=torch.float64, device=sim.device)
        ee = (home + self.home_noise * _uniform((n, 3), generator, sim.device)).clamp(
            self._low, self._high)
        qpos[ids[:, None], self._ee_cols] = ee
        qpos[ids[:, None], self._finger_cols] = FINGER_OPEN
        self._target[ids] = ee
        ctrl[ids] = torch.cat([ee, torch.full_like(ee[:, :2], FINGER_OPEN)], -1)
        pos, quat, goal = self._sample_scene(n, generator, sim.device)
        qpos[ids, self._q_obj:self._q_obj + 3] = pos
        qpos[ids, self._q_obj + 3:self._q_obj + 7] = quat
        self._goal[ids] = goal
        sim.field("mocap_pos")[ids, self._mocap] = self._marker_pos(goal)

    def _sample_scene(self, n: int, generator: torch.Generator, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Object position (n, 3), quaternion (n, 4) and goal (n, 3) of fresh episodes."""
        raise NotImplementedError

    def _marker_pos(self, goal: torch.Tensor) -> torch.Tensor:
        return goal

    # --- step -----------------------------------------------------------------------------
    def action_to_ctrl(self, sim: Any, action: torch.Tensor) -> torch.Tensor:
        ee = self.ee_pos(sim)
        target = self._target + action[:, :3] * self.max_delta
        target = torch.maximum(torch.minimum(target, ee + self.max_lead), ee - self.max_lead)
        self._target.copy_(torch.maximum(torch.minimum(target, self._high), self._low))
        closing = (action[:, 3:4] + 1.0) * 0.5
        finger = FINGER_OPEN + closing * (FINGER_SQUEEZE - FINGER_OPEN)
        return torch.cat([self._target, finger, finger], dim=-1)

    def observe(self, sim: Any) -> torch.Tensor:
        qvel = sim.field("qvel")
        ee, obj, quat = self.ee_pos(sim), self.obj_pos(sim), self.obj_quat(sim)
        quat = torch.where(quat[:, :1] < 0, -quat, quat)  # one sign per rotation
        return torch.cat([
            ee, self.opening(sim)[:, None], obj, quat, self._goal, obj - ee, self._goal - obj,
            qvel[:, self._v_ee], qvel[:, self._v_obj:self._v_obj + 3],
        ], dim=-1)

    def reward(self, sim: Any, action: torch.Tensor, before: Any) -> torch.Tensor:
        success = self.success(sim).to(torch.float64)
        if self.reward_type == "sparse":
            return success
        return torch.maximum(self._dense_reward(sim).clamp(0.0, 1.0), success)

    def _dense_reward(self, sim: Any) -> torch.Tensor:
        raise NotImplementedError

    def terminated(self, sim: Any) -> torch.Tensor:
        if self.terminate_on_success:
            return self.success(sim)
        return super().terminated(sim)

    # --- state accessors (batched views) ----------------------------------------------------
    def ee_pos(self, sim: Any) -> torch.Tensor:
        return sim.field("qpos")[:, self._ee_cols]  # carriages sit at the origin: slides = xyz

    def opening(self, sim: Any) -> torch.Tensor:
        return sim.field("qpos")[:, self._finger_cols].sum(-1)

    def obj_pos(self, sim: Any) -> torch.Tensor:
        return sim.field("qpos")[:, self._q_obj:self._q_obj + 3]

    def obj_quat(self, sim: Any) -> torch.Tensor:
        return sim.field("qpos")[:, self._q_obj + 3:self._q_obj + 7]

    def grasped(self, sim: Any) -> torch.Tensor:
        """Object between the closed pads: near the grip point, fingers stopped on it."""
        width = 2 * self._obj_half[1]
        near = (self.obj_pos(sim) - self.ee_pos(sim))[:, :2].norm(dim=-1) < 0.6 * width
        opening = self.opening(sim)
        return near & (opening < width + 0.004) & (opening > width - 0.01)


@register_task("push_cube")
class PushCube(_GantryTask):
    """Push a 4 cm cube across the table into a goal disc (radius `goal_radius`).

    The cube starts in a 16 x 16 cm square with random yaw; the goal is 8-15 cm away in a
    random direction (then clamped into a 34 x 34 cm square). Success: cube centre within
    `goal_radius` of the goal (in xy) and the cube on the table. Nothing needs grasping:
    the closed fingers make the pusher. `obs_layout`: see the module docstring; `goal` is
    on the table (z = 0).
    """

    description = "push a cube on the table into a goal disc"
    xml_file = "push_cube.xml"
    max_episode_steps = 150
    goal_radius: float = 0.03
    cube_range: float = 0.08
    goal_distance: tuple[float, float] = (0.08, 0.15)
    goal_limit: float = 0.17

    def _sample_scene(self, n, generator, device):
        xy = self.cube_range * _uniform((n, 2), generator, device)
        pos = torch.cat([xy, self._obj_half[2].expand(n, 1)], -1)
        quat = _yaw_quat(math.pi / 4 * _uniform((n,), generator, device))
        lo, hi = self.goal_distance
        r = lo + (hi - lo) * _rand((n,), generator, device)
        phi = 2 * math.pi * _rand((n,), generator, device)
        # Clamped so the pusher (behind the cube) stays inside the workspace near the goal.
        goal_xy = (xy + r[:, None] * torch.stack([phi.cos(), phi.sin()], -1)).clamp(
            -self.goal_limit, self.goal_limit)
        goal = torch.cat([goal_xy, torch.zeros_like(r)[:, None]], -1)
        return pos, quat, goal

    def success(self, sim):
        obj = self.obj_pos(sim)
        near = (obj[:, :2] - self._goal[:, :2]).norm(dim=-1) < self.goal_radius
        return near & (obj[:, 2] < 2 * self._obj_half[2])

    def _dense_reward(self, sim):
        obj, ee = self.obj_pos(sim), self.ee_pos(sim)
        reach = 1 - torch.tanh(10 * (obj - ee).norm(dim=-1))
        place = 1 - torch.tanh(10 * (obj[:, :2] - self._goal[:, :2]).norm(dim=-1))
        return 0.3 * reach + 0.7 * place


@register_task("pick_place")
class PickPlace(_GantryTask):
    """Pick up a 4 cm cube and hold it at a goal point above the table.

    The cube starts in a 20 x 20 cm square with yaw in +-0.3 rad; the goal is drawn in a
    24 x 24 cm square at 5-20 cm height. Success: cube centre within `goal_tolerance` of the
    goal (so the cube must be carried there, not pushed). `obs_layout`: module docstring.
    """

    description = "pick a cube and bring it to a goal point in the air"
    xml_file = "pick_place.xml"
    max_episode_steps = 150
    goal_tolerance: float = 0.025
    cube_range: float = 0.10
    goal_range: float = 0.12
    goal_height: tuple[float, float] = (0.05, 0.20)

    def _sample_scene(self, n, generator, device):
        xy = self.cube_range * _uniform((n, 2), generator, device)
        pos = torch.cat([xy, self._obj_half[2].expand(n, 1)], -1)
        quat = _yaw_quat(0.3 * _uniform((n,), generator, device))
        lo, hi = self.goal_height
        goal = torch.cat([self.goal_range * _uniform((n, 2), generator, device),
                          lo + (hi - lo) * _rand((n, 1), generator, device)], -1)
        return pos, quat, goal

    def success(self, sim):
        return (self.obj_pos(sim) - self._goal).norm(dim=-1) < self.goal_tolerance

    def _dense_reward(self, sim):
        obj, ee = self.obj_pos(sim), self.ee_pos(sim)
        reach = 1 - torch.tanh(10 * (obj - ee).norm(dim=-1))
        grasped = self.grasped(sim).to(torch.float64)
        place = 1 - torch.tanh(10 * (obj - self._goal).norm(dim=-1))
        return 0.25 * reach + 0.25 * grasped + 0.5 * place * grasped


@register_task("peg_insert")
class PegInsert(_GantryTask):
    """Insert a 2 x 2 x 8 cm square peg into a 2.3 cm square hole (3 mm total clearance).

    The peg starts STANDING ON THE TABLE (yaw +-0.1 rad) on one side of the workspace and
    the fixed block (a 6.3 cm square, 4 cm tall, hole through to the table) on the other
    side, sides and positions drawn per episode. The policy grasps the peg, lifts it and
    inserts it. `goal` in the observation is the centre of the hole's entrance (top face);
    `obj_pos` / `obj_quat` are the peg's centre and orientation (its bottom is
    `obj_pos + R(obj_quat) @ (0, 0, -peg_half_length)`). Success: the peg's bottom is at
    least `insert_depth` below the entrance and within the hole's half width in xy.
    """

    description = "grasp a square peg and insert it into a tight hole (3 mm clearance)"
    xml_file = "peg_insert.xml"
    object_body: ClassVar[str] = "peg"
    goal_body: ClassVar[str] = "block"
    max_episode_steps = 200
    insert_depth: float = 0.02
    hole_half_width: ClassVar[float] = 0.0115  # as built in peg_insert.xml
    block_height: ClassVar[float] = 0.04

    def peg_bottom(self, sim: Any) -> torch.Tensor:
        down = torch.zeros_like(self.obj_pos(sim))
        down[:, 2] = -self._obj_half[2]
        return self.obj_pos(sim) + quat_rotate(self.obj_quat(sim), down)

    def _sample_scene(self, n, generator, device):
        side = torch.where(_rand((n,), generator, device) < 0.5, -1.0, 1.0).to(torch.float64)
        peg_x = side * (0.04 + 0.08 * _rand((n,), generator, device))
        block_x = -side * (0.04 + 0.08 * _rand((n,), generator, device))
        y = 0.10 * _uniform((n, 2), generator, device)
        pos = torch.stack([peg_x, y[:, 0], self._obj_half[2].expand(n)], -1)
        quat = _yaw_quat(0.1 * _uniform((n,), generator, device))
        goal = torch.stack([block_x, y[:, 1], torch.full_like(block_x, self.block_height)], -1)
        return pos, quat, goal

    def _marker_pos(self, goal):
        return torch.cat([goal[:, :2], torch.zeros_like(goal[:, 2:])], -1)  # block on table

    def _insertion(self, sim: Any) -> tuple[torch.Tensor, torch.Tensor]:
        bottom = self.peg_bottom(sim)
        xy_err = (bottom[:, :2] - self._goal[:, :2]).norm(dim=-1)
        return xy_err, self._goal[:, 2] - bottom[:, 2]

    def success(self, sim):
        xy_err, depth = self._insertion(sim)
        return (xy_err < self.hole_half_width) & (depth >= self.insert_depth)

    def _dense_reward(self, sim):
        ee, peg = self.ee_pos(sim), self.obj_pos(sim)
        grip_point = peg.clone()
        grip_point[:, 2] += 0.025  # 1.5 cm below the peg's top: room for the pads above the block
        reach = 1 - torch.tanh(10 * (grip_point - ee).norm(dim=-1))
        grasped = self.grasped(sim).to(torch.float64)
        xy_err, depth = self._insertion(sim)
        align = 1 - torch.tanh(50 * xy_err)
        inside = (depth / self.insert_depth).clamp(0, 1) * (xy_err < self.hole_half_width)
        return 0.2 * reach + 0.2 * grasped + 0.3 * align * grasped + 0.3 * inside


# --- small batched helpers ------------------------------------------------------------------
def _rand(shape: tuple[int, ...], generator: torch.Generator, device: Any) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: Any) -> torch.Tensor:
    return 2 * _rand(shape, generator, device) - 1  # U(-1, 1)


def _yaw_quat(yaw: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(yaw)
    return torch.stack([(yaw / 2).cos(), zero, zero, (yaw / 2).sin()], -1)


def quat_rotate(quat: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """Rotate (N, 3) vectors by (N, 4) unit quaternions (w, x, y, z), MuJoCo's convention."""
    w, xyz = quat[:, :1], quat[:, 1:]
    t = 2 * torch.linalg.cross(xyz, vec)
    return vec + w * t + torch.linalg.cross(xyz, t)
