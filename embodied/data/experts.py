"""Batched experts to record demonstrations: scripted ones for the manipulation tasks and
the template `reach` task, a trained one (SAC, shipped in assets/experts/) for Hopper.

    expert = make_expert("pick_place", num_envs=N, noise=0.0, generator=torch.Generator())
    expert.reset()                         # all envs; later expert.reset(ids) for reset envs
    action = expert.act(obs["state"])      # (N, 4) in [-1, 1]

Each expert is a per-env phase state machine (approach, descend, grasp, lift, move, insert,
...) written on (N, ...) torch tensors. It reads positions only from the observation,
through the task's `obs_layout`, so it runs on recorded or real observations as well.
`noise` > 0 adds Gaussian action noise, signal-dependent (std = noise x (0.2 + |a|) per
dimension), and jitters the waypoints (std = noise x 2 cm, drawn per episode), so
demonstrations are imperfect. Success falls smoothly with noise; peg_insert, the precision
task, falls first (roughly, over 100 episodes: noise 0.3 -> 1.0 / 1.0 / 0.99 for push /
pick / peg; push 0.7 -> ~0.8, pick 0.7 -> ~0.94, peg 0.5 -> ~0.2).
Demonstrations are multimodal: push_cube goes around the cube on one of two sides;
pick_place and peg_insert grasp at one of two heights; drawn per episode from `generator`,
the only source of randomness (same generator seed, same demonstrations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file

from embodied.core.errors import ConfigError
from embodied.core.paths import ASSETS_DIR
from embodied.envs.registry import get_task_class
from embodied.envs.tasks.manipulation import quat_rotate

OPEN, CLOSE = -1.0, 1.0


class ScriptedExpert:
    """Shared state, noise and helpers. Gantry experts write `_plan` (ee target + gripper per
    phase); others override `_command` (the noise-free action) directly."""

    task_name: ClassVar[str] = ""
    obs_layout: ClassVar[dict[str, slice]] = {}  # used where the task has no `obs_layout`
    gain: ClassVar[float] = 0.6  # < 1: the servo lags its target by ~1 step; avoid overshoot
    noise_floor: ClassVar[float] = 0.2
    jitter_scale: ClassVar[float] = 0.02  # waypoint jitter std (m) per unit of noise

    def __init__(self, num_envs: int, noise: float = 0.0,
                 generator: torch.Generator | None = None, max_delta: float | None = None,
                 device: str | torch.device = "cpu",
                 task_options: dict[str, Any] | None = None) -> None:
        # The task as configured (options such as max_delta change the expert's gains too).
        task = get_task_class(self.task_name)(**(task_options or {}))
        self.layout = dict(getattr(task, "obs_layout", self.obs_layout))
        default_delta = getattr(task, "max_delta", 1.0)
        self.max_delta = float(max_delta if max_delta is not None else default_delta)
        f64 = {"dtype": torch.float64, "device": device}
        self._low = torch.tensor(getattr(task, "workspace_low", (-1e9,) * 3), **f64)
        self._high = torch.tensor(getattr(task, "workspace_high", (1e9,) * 3), **f64)
        self.num_envs, self.noise, self.device = num_envs, float(noise), torch.device(device)
        self.generator = generator if generator is not None else torch.Generator(self.device)
        self.phase = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.timer = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.mode = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.jitter = torch.zeros((num_envs, 3), dtype=torch.float64, device=self.device)
        self.reset()

    def reset(self, ids: torch.Tensor | None = None) -> None:
        """Start a new episode in envs `ids` (default: all): phase 0, fresh mode and jitter."""
        if ids is None:
            ids = torch.arange(self.num_envs, device=self.device)
        ids = torch.as_tensor(ids, device=self.device).reshape(-1)
        if ids.dtype == torch.bool:
            ids = ids.nonzero().squeeze(-1)
        n = len(ids)
        self.phase[ids] = 0
        self.timer[ids] = 0
        coin = torch.rand(n, generator=self.generator, device=self.device)
        self.mode[ids] = (coin < 0.5).long()
        self.jitter[ids] = self.jitter_scale * self.noise * torch.randn(
            (n, 3), generator=self.generator, dtype=torch.float64, device=self.device)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions (N, 4) in [-1, 1] for observations (N, Do) of the task's state layout."""
        action = self._command(obs.to(self.device, torch.float64))
        if self.noise > 0:
            # Signal-dependent noise (as in human motor control): big moves are sloppy, fine
            # corrections stay fairly precise, so noisy demos still finish precise tasks.
            std = self.noise * (self.noise_floor + action.abs())
            action = action + std * torch.randn(
                action.shape, generator=self.generator, dtype=action.dtype, device=self.device)
        self.timer += 1
        return action.clamp(-1.0, 1.0).to(torch.float32)

    def _command(self, obs: torch.Tensor) -> torch.Tensor:
        """Noise-free action: steer the ee to the phase's target, plus the gripper command."""
        target, grip = self._plan(obs)
        move = (self.gain * (target - self.get(obs, "ee_pos")) / self.max_delta).clamp(-1, 1)
        return torch.cat([move, grip[:, None]], dim=-1)

    # --- helpers for subclasses -----------------------------------------------------------
    def get(self, obs: torch.Tensor, name: str) -> torch.Tensor:
        return obs[:, self.layout[name]]

    def _clamp(self, target: torch.Tensor) -> torch.Tensor:
        """Keep waypoints reachable, so "reached" tests can pass at the workspace edge."""
        return torch.maximum(torch.minimum(target, self._high), self._low)

    def _goto(self, ids: torch.Tensor, phase: int) -> None:
        """Move envs where `ids` (bool) to `phase`, restarting their phase timer."""
        self.phase = torch.where(ids, phase, self.phase)
        self.timer = torch.where(ids, 0, self.timer)

    def _plan(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _select(phase: torch.Tensor, options: list[torch.Tensor]) -> torch.Tensor:
    """Row i of options[phase[i]]: per-env choice among per-phase (N, ...) tensors."""
    stacked = torch.stack(options, dim=0)
    index = phase.view(1, -1, *([1] * (stacked.dim() - 2))).expand(1, *stacked.shape[1:])
    return stacked.gather(0, index).squeeze(0)


def _near(a: torch.Tensor, b: torch.Tensor, tol: float) -> torch.Tensor:
    return (a - b).norm(dim=-1) < tol


class PushExpert(ScriptedExpert):
    """Around the cube on side `mode` (left / right of the push line), down, behind, push.

    Phases: 0 hover beside the cube, 1 descend beside it, 2 swing behind it, 3 line up
    behind it, 4 push along the cube-goal line with lateral correction. If the cube slips
    off the pusher's line the expert backs off upwards (5) and starts over.
    """

    task_name = "push_cube"
    hover_z: ClassVar[float] = 0.08
    push_z: ClassVar[float] = 0.016  # pad centre a little below the cube's centre
    side_offset: ClassVar[float] = 0.075
    behind: ClassVar[float] = 0.065
    push_speed: ClassVar[float] = 1.0  # at most this x max_delta per step while pushing

    def _plan(self, obs):
        ee, cube, goal = self.get(obs, "ee_pos"), self.get(obs, "obj_pos"), self.get(obs, "goal")
        to_goal = goal[:, :2] - cube[:, :2]
        dist = to_goal.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        d = to_goal / dist
        perp = torch.stack([-d[:, 1], d[:, 0]], -1) * (2.0 * self.mode[:, None] - 1.0)
        c = cube[:, :2] + self.jitter[:, :2]

        def at(xy: torch.Tensor, z: float) -> torch.Tensor:
            return torch.cat([xy, torch.full_like(xy[:, :1], z)], -1)

        side = c + self.side_offset * perp
        # Pusher contact point sits ~3 cm behind the cube centre; push a little past it.
        contact = c - 0.03 * d
        lateral = ((ee[:, :2] - contact) * torch.stack([-d[:, 1], d[:, 0]], -1)).sum(-1)
        ahead = ((ee[:, :2] - contact) * d).sum(-1)
        # Slow, quasi-static pushing: the cube goes where it is pushed instead of spinning.
        push_step = (0.6 * dist).clamp(max=self.max_delta * self.push_speed)
        push_xy = ee[:, :2] + push_step * d - lateral[:, None] * torch.stack(
            [-d[:, 1], d[:, 0]], -1)
        targets = [
            at(side, self.hover_z),
            at(side, self.push_z),
            at(side - self.behind * d, self.push_z),
            at(c - self.behind * d, self.push_z),
            at(push_xy, self.push_z),
            at(ee[:, :2] - 0.02 * d, self.hover_z),
        ]
        target = self._clamp(_select(self.phase, targets))
        p = self.phase
        reached = _near(ee, target, 0.01)
        self._goto((p == 0) & _near(ee[:, :2], target[:, :2], 0.01), 1)
        self._goto((p == 1) & ((ee[:, 2] - self.push_z).abs() < 0.006), 2)
        self._goto((p == 2) & reached, 3)
        self._goto((p == 3) & reached, 4)
        lost = (p == 4) & ((lateral.abs() > 0.02) | (ahead > 0.02) | (ahead < -0.06))
        self._goto(lost, 5)
        self._goto((p == 5) & (ee[:, 2] > self.hover_z - 0.02), 0)
        return target, torch.full_like(ee[:, 0], CLOSE)


class PickPlaceExpert(ScriptedExpert):
    """Above the cube, down to grasp height (mode: low or high on the cube), close, lift,
    carry so the cube (not the hand) lands on the goal. Starts over if the cube is lost."""

    task_name = "pick_place"
    cube_half: ClassVar[float] = 0.02  # as built in assets/manipulation/pick_place.xml
    grasp_dz: ClassVar[tuple[float, float]] = (-0.003, 0.008)
    hover: ClassVar[float] = 0.07
    close_steps: ClassVar[int] = 5

    def _plan(self, obs):
        ee, cube, goal = self.get(obs, "ee_pos"), self.get(obs, "obj_pos"), self.get(obs, "goal")
        opening = self.get(obs, "gripper")[:, 0]
        dz = torch.tensor(self.grasp_dz, dtype=ee.dtype, device=ee.device)[self.mode]
        grasp = cube + 0.3 * self.jitter  # a few mm off-centre grasps when noisy
        grasp[:, 2] += dz
        hover = grasp.clone()
        hover[:, 2] = cube[:, 2] + self.hover
        lift = ee.clone()
        lift[:, 2] = ee[:, 2] + 0.05
        carry = ee + (goal - cube)  # closed loop on the cube's position, not the hand's
        target = _select(self.phase, [hover, grasp, grasp, lift, carry])
        grip = torch.where(self.phase >= 2, CLOSE, OPEN)

        p, half = self.phase, self.cube_half
        self._goto((p == 0) & _near(ee[:, :2], hover[:, :2], 0.006)
                   & ((ee[:, 2] - hover[:, 2]).abs() < 0.03), 1)
        self._goto((p == 1) & _near(ee, grasp, 0.005), 2)
        self._goto((p == 2) & (self.timer >= self.close_steps), 3)
        self._goto((p == 3) & (cube[:, 2] > half + 0.03), 4)
        lost = (p >= 3) & ((opening < 2 * half - 0.01) | ((cube - ee).norm(dim=-1) > 0.04))
        self._goto(lost, 0)
        return target, grip


class PegInsertExpert(ScriptedExpert):
    """Above the peg, down to grasp height (mode: two heights), close, lift, line the peg's
    bottom up over the hole, then descend slowly while correcting xy; re-align on a jam."""

    task_name = "peg_insert"
    peg_half_len: ClassVar[float] = 0.04  # as built in assets/manipulation/peg_insert.xml
    grasp_dz: ClassVar[tuple[float, float]] = (0.025, 0.015)  # above the peg's centre
    close_steps: ClassVar[int] = 6
    align_tol: ClassVar[float] = 0.0015
    insert_speed: ClassVar[float] = 0.005

    def _plan(self, obs):
        ee, peg, hole = self.get(obs, "ee_pos"), self.get(obs, "obj_pos"), self.get(obs, "goal")
        quat, opening = self.get(obs, "obj_quat"), self.get(obs, "gripper")[:, 0]
        down = torch.zeros_like(peg)
        down[:, 2] = -self.peg_half_len
        bottom = peg + quat_rotate(quat, down)
        dz = torch.tensor(self.grasp_dz, dtype=ee.dtype, device=ee.device)[self.mode]
        grasp = peg + 0.3 * self.jitter
        grasp[:, 2] += dz
        hover = grasp.clone()
        hover[:, 2] = grasp[:, 2] + 0.06
        lift = ee.clone()
        lift[:, 2] = 0.17
        xy_err = hole[:, :2] - bottom[:, :2]  # move the hand so the peg's bottom is over the hole
        align = torch.cat([ee[:, :2] + xy_err, (ee[:, 2] + hole[:, 2] + 0.012
                                                - bottom[:, 2])[:, None]], -1)
        insert = torch.cat([ee[:, :2] + xy_err, (ee[:, 2] - self.insert_speed)[:, None]], -1)
        target = _select(self.phase, [hover, grasp, grasp, lift, align, insert])
        grip = torch.where(self.phase >= 2, CLOSE, OPEN)

        p = self.phase
        err = xy_err.norm(dim=-1)
        self._goto((p == 0) & _near(ee[:, :2], hover[:, :2], 0.005)
                   & ((ee[:, 2] - hover[:, 2]).abs() < 0.03), 1)
        self._goto((p == 1) & _near(ee, grasp, 0.004), 2)
        self._goto((p == 2) & (self.timer >= self.close_steps), 3)
        self._goto((p == 3) & (bottom[:, 2] > hole[:, 2] + 0.02), 4)
        steady = self.get(obs, "ee_vel").norm(dim=-1) < 0.02
        self._goto((p == 4) & (err < self.align_tol) & steady & (self.timer >= 2), 5)
        jammed = (p == 5) & (err > 2 * self.align_tol) & (bottom[:, 2] > hole[:, 2] - 0.003)
        self._goto(jammed, 4)
        lost = (p >= 3) & ((opening < 0.01) | ((peg - ee).norm(dim=-1) > 0.05))
        self._goto(lost, 0)
        return target, grip


class ReachExpert(ScriptedExpert):
    """The template task's point mass: a PD force controller towards the goal."""

    task_name = "reach"
    obs_layout = {"pos": slice(0, 2), "vel": slice(2, 4), "goal": slice(4, 6)}
    kp: ClassVar[float] = 20.0
    kd: ClassVar[float] = 2.0

    def _command(self, obs):
        err = self.get(obs, "goal") - self.get(obs, "pos")
        return (self.kp * err - self.kd * self.get(obs, "vel")).clamp(-1.0, 1.0)


EXPERTS: dict[str, type[ScriptedExpert]] = {
    cls.task_name: cls for cls in (PushExpert, PickPlaceExpert, PegInsertExpert, ReachExpert)
}


class MLPExpert:
    """A trained expert: a ReLU MLP with a tanh output, from a safetensors file.

    The file holds `layers.{i}.weight/bias` (see `scripts/train_hopper_expert.py`, which
    exports an SB3 SAC actor this way). `noise` adds Gaussian noise of that std to actions.
    """

    def __init__(self, path: str | Path, num_envs: int, noise: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(
                f"expert checkpoint {path} is missing; make it with "
                "`python scripts/train_hopper_expert.py` (or reinstall the package)"
            )
        tensors = load_file(str(path))
        n = len(tensors) // 2
        self.layers = [(tensors[f"layers.{i}.weight"].double(),
                        tensors[f"layers.{i}.bias"].double()) for i in range(n)]
        self.num_envs, self.noise = num_envs, float(noise)
        self.generator = generator if generator is not None else torch.Generator()

    def reset(self, ids: torch.Tensor | None = None) -> None:
        pass  # memoryless

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(torch.float64)
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            x = torch.relu(x) if i < len(self.layers) - 1 else torch.tanh(x)
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        return x.clamp(-1.0, 1.0).to(torch.float32)


TRAINED_EXPERTS: dict[str, str] = {"hopper": "experts/hopper_sac.safetensors"}


def expert_names() -> list[str]:
    return sorted([*EXPERTS, *TRAINED_EXPERTS])


def make_expert(task_name: str, num_envs: int, noise: float = 0.0,
                generator: torch.Generator | None = None, **kwargs) -> ScriptedExpert:
    """The expert of `task_name` (scripted, or trained from assets/) for `num_envs` envs."""
    if task_name in TRAINED_EXPERTS:
        path = ASSETS_DIR / TRAINED_EXPERTS[task_name]
        return MLPExpert(path, num_envs, noise=noise, generator=generator)  # no task options
    try:
        cls = EXPERTS[task_name]
    except KeyError:
        raise ConfigError(
            f"no expert for task {task_name!r}; experts exist for {expert_names()}"
        ) from None
    return cls(num_envs, noise=noise, generator=generator, **kwargs)
