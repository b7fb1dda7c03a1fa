"""Hopper, Walker2d, HalfCheetah and Ant, batched, matching gymnasium's v5 definitions.

The models are gymnasium's own XML files, so physics is identical; observation, reward,
termination and reset noise follow `gymnasium/envs/mujoco/*_v5.py` with default arguments.
`tests/test_locomotion_parity.py` steps both from the same state and compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import mujoco
import torch

from embodied.core.errors import ConfigError
from embodied.envs.registry import register_task
from embodied.envs.task import Task

GYM_ASSETS = Path(gymnasium.__file__).resolve().parent / "envs" / "mujoco" / "assets"


class _Locomotion(Task):
    """Shared pieces: gymnasium model file, forward velocity, uniform reset noise."""

    xml_file: ClassVar[str] = ""
    forward_stage = int(mujoco.mjtStage.mjSTAGE_NONE)  # gymnasium reads pre-substep xpos
    frame_skip = 4
    max_episode_steps = 1000
    forward_reward_weight: float = 1.0
    ctrl_cost_weight: float = 1e-3
    reset_noise_scale: float = 5e-3
    gaussian_qvel_noise: ClassVar[bool] = False  # HalfCheetah and Ant draw qvel ~ N(0, s^2)
    success_distance: float = 5.0
    """Success (ours; gymnasium has none): the torso has moved this far forward in +x.
    Falling ends the episode, so an episode succeeds if it gets there before falling."""

    def build_model(self) -> mujoco.MjModel:
        return mujoco.MjModel.from_xml_path(str(GYM_ASSETS / self.xml_file))

    @property
    def needs_env_data(self) -> bool:
        """Whether a hook reads an env's derived fields after the call that computed them
        (get_data, stages a step continues from), so that the backend keeps one MjData per
        env. The locomotion tasks read state fields and outputs they bind in setup."""
        return False

    def setup(self, sim: Any) -> None:
        self._qpos0 = torch.as_tensor(sim.model.qpos0, dtype=torch.float64, device=sim.device)
        self._dt = float(sim.model.opt.timestep) * self.frame_skip
        # Live views read every step, sliced once: each slice is a torch call, and after a
        # batch step has evicted the caches a torch call costs several times its warm time.
        self._x = sim.field("qpos")[:, 0]

    def _control_dt(self, sim: Any) -> torch.Tensor | float:
        """Seconds per env step: per env when domain randomisation varies the timestep
        (velocities differentiated with the nominal dt would pay some envs more)."""
        timestep = sim.timestep() if hasattr(sim, "timestep") else None
        return self._dt if timestep is None or isinstance(timestep, float) \
            else timestep * self.frame_skip

    def reset(self, sim: Any, ids: torch.Tensor, generator: torch.Generator) -> None:
        n, s = len(ids), self.reset_noise_scale
        nq, nv = sim.model.nq, sim.model.nv
        qpos_noise = _uniform((n, nq), s, generator, sim.device)
        if self.gaussian_qvel_noise:
            qvel = s * torch.randn((n, nv), generator=generator, dtype=torch.float64,
                                   device=sim.device)
        else:
            qvel = _uniform((n, nv), s, generator, sim.device)
        sim.field("qpos")[ids] = self._qpos0 + qpos_noise
        sim.field("qvel")[ids] = qvel

    def before_step(self, sim: Any) -> torch.Tensor:
        return self._x.clone()

    def forward_velocity(self, sim: Any, x_before: torch.Tensor) -> torch.Tensor:
        return (self._x - x_before) / self._control_dt(sim)

    def success(self, sim: Any) -> torch.Tensor:
        return self._x >= self.success_distance

    def ctrl_cost(self, action: torch.Tensor) -> torch.Tensor:
        return self.ctrl_cost_weight * action.square().sum(-1)

    def video_camera(self) -> mujoco.MjvCamera:
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
        cam.trackbodyid = 1
        cam.distance = 4.0
        cam.elevation = -20.0
        return cam


def _uniform(shape: tuple[int, int], scale: float, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    unit = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return (unit * 2 - 1) * scale


class _PlanarWalker(_Locomotion):
    """Hopper and Walker2d: obs = qpos[1:], clip(qvel, -10, 10); healthy-based termination."""

    healthy_reward: float = 1.0
    terminate_when_unhealthy: bool = True
    healthy_z_range: ClassVar[tuple[float, float]] = (0.0, float("inf"))
    healthy_angle_range: ClassVar[tuple[float, float]] = (-float("inf"), float("inf"))
    healthy_state_range: ClassVar[tuple[float, float] | None] = None

    def observe(self, sim: Any) -> torch.Tensor:
        qvel = sim.field("qvel").clamp(-10.0, 10.0)
        return torch.cat([sim.field("qpos")[:, 1:], qvel], dim=-1)

    def is_healthy(self, sim: Any) -> torch.Tensor:
        qpos = sim.field("qpos")
        z, angle = qpos[:, 1], qpos[:, 2]
        ok = (self.healthy_z_range[0] < z) & (z < self.healthy_z_range[1])
        ok &= (self.healthy_angle_range[0] < angle) & (angle < self.healthy_angle_range[1])
        if self.healthy_state_range is not None:
            lo, hi = self.healthy_state_range
            state = torch.cat([qpos[:, 2:], sim.field("qvel")], dim=-1)
            ok &= ((lo < state) & (state < hi)).all(-1)
        return ok

    def reward(self, sim: Any, action: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        healthy = self.is_healthy(sim) | (not self.terminate_when_unhealthy)
        forward = self.forward_reward_weight * self.forward_velocity(sim, before)
        return forward + self.healthy_reward * healthy - self.ctrl_cost(action)

    def terminated(self, sim: Any) -> torch.Tensor:
        if not self.terminate_when_unhealthy:
            return super().terminated(sim)
        return ~self.is_healthy(sim)


@register_task("hopper")
class Hopper(_PlanarWalker):
    description = "gymnasium Hopper-v5: hop forward without falling"
    xml_file = "hopper.xml"
    healthy_z_range = (0.7, float("inf"))
    healthy_angle_range = (-0.2, 0.2)
    healthy_state_range = (-100.0, 100.0)


@register_task("walker2d")
class Walker2d(_PlanarWalker):
    description = "gymnasium Walker2d-v5: walk forward without falling"
    xml_file = "walker2d_v5.xml"
    healthy_z_range = (0.8, 2.0)
    healthy_angle_range = (-1.0, 1.0)


@register_task("halfcheetah")
class HalfCheetah(_Locomotion):
    description = "gymnasium HalfCheetah-v5: run forward; never terminates"
    xml_file = "half_cheetah.xml"
    frame_skip = 5
    ctrl_cost_weight = 0.1
    reset_noise_scale = 0.1
    gaussian_qvel_noise = True
    success_distance = 20.0

    def observe(self, sim: Any) -> torch.Tensor:
        return torch.cat([sim.field("qpos")[:, 1:], sim.field("qvel")], dim=-1)

    def reward(self, sim: Any, action: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        forward = self.forward_reward_weight * self.forward_velocity(sim, before)
        return forward - self.ctrl_cost(action)


@register_task("ant")
class Ant(_Locomotion):
    description = "gymnasium Ant-v5: walk in +x; contact forces in the observation"
    xml_file = "ant.xml"
    frame_skip = 5
    ctrl_cost_weight = 0.5
    contact_cost_weight: float = 5e-4
    healthy_reward: float = 1.0
    healthy_z_range: ClassVar[tuple[float, float]] = (0.2, 1.0)
    reset_noise_scale = 0.1
    gaussian_qvel_noise = True

    contact_forces: str = "in_step"
    """How cfrc_ext (in the observation and the contact cost) is computed.
    "in_step" (default): MuJoCo computes it inside the step, from the first RK4 stage of the
    last substep (an accelerometer on the torso triggers it): no extra work. "gymnasium":
    as Ant-v5 does, by mj_rnePostConstraint after the step, which reads the constraint forces
    of the last RK4 stage: bit-equal to gymnasium, but a per-env pass after every step
    (~20% slower). The physics, the other observations and terminations are identical."""

    def build_model(self) -> mujoco.MjModel:
        spec = mujoco.MjSpec.from_file(str(GYM_ASSETS / self.xml_file))
        if self.contact_forces == "in_step":
            site = spec.body("torso").add_site(name="cfrc_trigger")
            spec.add_sensor(type=mujoco.mjtSensor.mjSENS_ACCELEROMETER,
                            objtype=mujoco.mjtObj.mjOBJ_SITE, objname=site.name)
        elif self.contact_forces != "gymnasium":
            raise ConfigError(
                f"ant: contact_forces must be 'gymnasium' or 'in_step', got {self.contact_forces!r}"
            )
        return spec.compile()

    @property
    def needs_env_data(self) -> bool:
        return self.contact_forces == "gymnasium"  # mj_rnePostConstraint on each env's MjData

    def setup(self, sim: Any) -> None:
        super().setup(sim)
        self._torso = 1
        # Live views, sliced once as self._x, and outputs bound before the first call:
        # without per-env MjData a call fills only the outputs bound before it.
        self._torso_x = sim.field("xpos")[:, self._torso, 0]
        self._cfrc_ext = sim.field("cfrc_ext")
        self._z, self._qpos_no_xy = sim.field("qpos")[:, 2], sim.field("qpos")[:, 2:]
        self._scratch = mujoco.MjData(sim.model)
        self._cfrc = torch.zeros((sim.num_envs, sim.model.nbody, 6), dtype=torch.float64)

    def _contact_forces(self, sim: Any) -> torch.Tensor:
        if self.contact_forces == "in_step":
            return self._cfrc_ext.clamp(-1.0, 1.0)
        return self._cfrc.clamp(-1.0, 1.0)

    def after_step(self, sim: Any) -> None:
        if self.contact_forces == "gymnasium":
            self._post_constraint_forces(sim, range(sim.num_envs))
        # observe, reward and terminated all read these: compute them once per step.
        self._contact = self._contact_forces(sim)
        self._healthy = self.is_healthy(sim)

    def after_reset(self, sim: Any, ids: torch.Tensor) -> None:
        if self.contact_forces == "gymnasium":
            self._post_constraint_forces(sim, ids.tolist())
        self._contact = self._contact_forces(sim)  # the reset envs' first observation

    def _post_constraint_forces(self, sim: Any, envs: Any) -> None:
        data, model, out = self._scratch, sim.model, self._cfrc.numpy()
        for i in envs:
            sim.get_data(i, data)
            mujoco.mj_rnePostConstraint(model, data)
            out[i] = data.cfrc_ext

    def observe(self, sim: Any) -> torch.Tensor:
        contact = self._contact[:, 1:].flatten(1)
        return torch.cat([self._qpos_no_xy, sim.field("qvel"), contact], dim=-1)

    def before_step(self, sim: Any) -> torch.Tensor:
        return self._torso_x.clone()

    def forward_velocity(self, sim: Any, x_before: torch.Tensor) -> torch.Tensor:
        return (self._torso_x - x_before) / self._control_dt(sim)

    def is_healthy(self, sim: Any) -> torch.Tensor:
        finite = torch.isfinite(torch.cat([sim.field("qpos"), sim.field("qvel")], dim=-1)).all(-1)
        z = self._z
        return finite & (self.healthy_z_range[0] <= z) & (z <= self.healthy_z_range[1])

    def reward(self, sim: Any, action: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        forward = self.forward_reward_weight * self.forward_velocity(sim, before)
        contact_cost = self.contact_cost_weight * self._contact.square().sum((-1, -2))
        healthy = self.healthy_reward * self._healthy
        return forward + healthy - self.ctrl_cost(action) - contact_cost

    def terminated(self, sim: Any) -> torch.Tensor:
        return ~self._healthy
