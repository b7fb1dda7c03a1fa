"""A Robot as one more environment: the VecEnv's tensors and step signature, one env.

    env = RobotEnv(robot, "push_cube")         # connects; checks the robot against the task
    obs = env.reset(seed=0)                     # {"state": float32 [1, 26]}
    obs, reward, terminated, truncated, info = env.step(actions)   # actions [1, 4] in [-1, 1]

The simulated task is the specification: the robot's observation features must have the
shapes the task's observations have (a policy trained in simulation reads them), checked
when the env is built. A step sends the action through the robot's safety layer
(`info["action_sent"]` is what went out; NaN when nothing did: a hold before the robot's
first command, with no measured position to hold at) and returns the robot's next
observation, so the loop runs at the rate the robot publishes observations (the fake robot:
its control rate).
Reward, termination and success come from the robot's episode status where it reports one
(the fake robot does); elsewhere they are 0 / False and episodes end by truncation.

Unlike a VecEnv, a robot does not reset itself inside `step`: after an episode ends, call
`reset()`. It asks the robot for a new episode where it can (`Robot.reset_episode`);
a real robot without a reset topic starts from wherever the operator left the scene.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from embodied.core.errors import RobotError
from embodied.envs import make_env
from embodied.sim2real.robot import EpisodeStatus, Robot

Obs = dict[str, torch.Tensor]


class RobotEnv:
    """One robot with the VecEnv interface (num_envs = 1, CPU tensors)."""

    num_envs = 1

    def __init__(self, robot: Robot, task: str, task_options: dict[str, Any] | None = None, *,
                 cameras: tuple[str, ...] = (), image_size: int = 96,
                 obs_timeout_s: float = 1.0, connect_timeout_s: float = 30.0) -> None:
        spec = make_env(task, num_envs=1, nthread=1, **(task_options or {}))
        self.task, self.task_name = spec.task, task
        self.obs_dim, self.action_dim, self.dt = spec.obs_dim, spec.action_dim, spec.dt
        self.max_episode_steps = spec.max_episode_steps
        unknown = [c for c in cameras if c not in spec.task.cameras]
        spec.close()
        if unknown:
            raise RobotError(f"task {task!r} has no camera {unknown}; its cameras: "
                             f"{list(spec.task.cameras)}")
        self.cameras, self.image_size = tuple(cameras), image_size
        self.robot, self.obs_timeout_s = robot, obs_timeout_s
        self.device = torch.device("cpu")
        if not robot.is_connected:
            robot.connect(connect_timeout_s)
        self._check_spec()
        self._elapsed = 0
        self._return = 0.0
        self._ever_success = False
        self._needs_reset = True
        self.status: EpisodeStatus | None = None

    def _check_spec(self) -> None:
        want = {"state": (self.obs_dim,)}
        want.update({f"rgb_{c}": (self.image_size, self.image_size, 3) for c in self.cameras})
        have = self.robot.observation_features
        problems = [f"{k}: the robot gives {have[k] if k in have else 'nothing'}, the task "
                    f"expects {shape}" for k, shape in want.items() if have.get(k) != shape]
        action = self.robot.action_features.get("action")
        if action != (self.action_dim,):
            problems.append(f"action: the robot takes {action}, the task's actions are "
                            f"({self.action_dim},)")
        if problems:
            raise RobotError(
                f"robot {self.robot.name!r} does not match task {self.task_name!r} "
                f"({'; '.join(problems)}). A policy trained on the task would read the wrong "
                "values: map the robot's topics to the task's observation layout (the topic "
                "map's `observations`), or pick the task the robot mirrors (the fake robot: "
                "its --task)")

    # --- the VecEnv seam ------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> Obs:
        """Start an episode (asking the robot for one if it can); its first observation."""
        if self.robot.reset_episode(seed, timeout=max(5.0, 5 * self.obs_timeout_s)):
            observation = self.robot.get_observation()
        else:
            observation = self.robot.wait_for_observation(self.obs_timeout_s)
        self.status = self.robot.episode_status()
        self._elapsed, self._return, self._ever_success = 0, 0.0, False
        self._needs_reset = False
        return self._to_obs(observation)

    def step(self, actions: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor,
                                                    torch.Tensor, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() first (a robot does not reset itself after an "
                               "episode ends)")
        actions = torch.as_tensor(actions)
        if actions.shape != (1, self.action_dim):
            raise ValueError(f"actions must have shape (1, {self.action_dim}), got "
                             f"{tuple(actions.shape)}")
        # Unclipped: the robot's safety layer clips (and holds on NaN) and logs it.
        sent = self.robot.send_action(actions[0].double().numpy())
        if sent is None:  # nothing went out (see the module docstring)
            sent = np.full(self.action_dim, np.nan)
        observation = self.robot.wait_for_observation(self.obs_timeout_s)
        status = self.status = self.robot.episode_status()
        self._elapsed += 1
        reward = status.reward if status is not None else 0.0
        success = bool(status.success) if status is not None else False
        terminated = bool(status.terminated) if status is not None else False
        truncated = not terminated and (
            self._elapsed >= self.max_episode_steps or bool(status and status.truncated))
        self._return += reward
        self._ever_success |= success
        obs = self._to_obs(observation)
        info: dict[str, Any] = {"success": torch.tensor([success]),
                                "action_sent": torch.as_tensor(sent[None], dtype=torch.float32),
                                "status": status}
        if terminated or truncated:
            info["final_obs"] = {k: v.clone() for k, v in obs.items()}
            info["episode_return"] = torch.tensor([self._return], dtype=torch.float32)
            info["episode_length"] = torch.tensor([self._elapsed])
            info["episode_success"] = torch.tensor([self._ever_success])
            self._needs_reset = True
        return (obs, torch.tensor([reward], dtype=torch.float32), torch.tensor([terminated]),
                torch.tensor([truncated]), info)

    def observe(self) -> tuple[Obs, EpisodeStatus | None]:
        """The robot's next observation and episode status, sending nothing (for control
        loops that send from their own thread, like the chunk executor)."""
        observation = self.robot.wait_for_observation(self.obs_timeout_s)
        self.status = self.robot.episode_status()
        return self._to_obs(observation), self.status

    def render(self, env_ids: list[int] | None = None) -> np.ndarray:
        raise NotImplementedError("a robot has no renderer: map a camera topic to an "
                                  "rgb_<camera> observation instead")

    def close(self) -> None:
        """Disconnect the robot (it gets a last hold command)."""
        if self.robot.is_connected:
            self.robot.disconnect()

    def _to_obs(self, observation: dict[str, np.ndarray]) -> Obs:
        obs = {"state": torch.as_tensor(observation["state"], dtype=torch.float32)[None]}
        for cam in self.cameras:
            obs[f"rgb_{cam}"] = torch.as_tensor(observation[f"rgb_{cam}"])[None]
        return obs
