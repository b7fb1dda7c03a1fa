"""Bridges to the ecosystem: a gymnasium single-env view and a Stable-Baselines3 VecEnv.

    env = GymEnv("hopper")                        # gymnasium.Env, passes the env checker
    venv = SB3VecEnv(make_env("hopper", num_envs=8))   # any SB3 algorithm trains on it
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from embodied.envs.vec_env import MujocoVecEnv, make_env


def _observation_space(env: MujocoVecEnv) -> gym.Space:
    state = gym.spaces.Box(-np.inf, np.inf, shape=(env.obs_dim,), dtype=np.float32)
    if not env.cameras:
        return state
    size = (env.image_size, env.image_size, 3)
    spaces = {"state": state}
    spaces.update({f"rgb_{c}": gym.spaces.Box(0, 255, size, np.uint8) for c in env.cameras})
    return gym.spaces.Dict(spaces)


def _to_numpy(obs: dict[str, torch.Tensor], index: Any, flat: bool) -> Any:
    if flat:
        return obs["state"][index].cpu().numpy()
    return {k: v[index].cpu().numpy() for k, v in obs.items()}


class GymEnv(gym.Env):
    """One env of a task as a gymnasium.Env (observations float32; actions in [-1, 1])."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(self, task: str | MujocoVecEnv, render_mode: str | None = None,
                 **kwargs: Any) -> None:
        self.vec = task if isinstance(task, MujocoVecEnv) else make_env(task, 1, **kwargs)
        if self.vec.num_envs != 1:
            raise ValueError("GymEnv wraps a single env; build the VecEnv with num_envs=1")
        self.observation_space = _observation_space(self.vec)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.vec.action_dim,), np.float32)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.vec.dt))}
        self._flat = not self.vec.cameras

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None and self.vec._needs_reset:
            # gymnasium seeds np_random from entropy here; derive our generator from it.
            seed = int(self.np_random.integers(2**31))
        obs = self.vec.reset(seed=seed)
        return _to_numpy(obs, 0, self._flat), {}

    def step(self, action):
        action = torch.as_tensor(np.asarray(action, dtype=np.float64).reshape(1, -1))
        obs, reward, terminated, truncated, info = self.vec.step(action)
        done = bool(terminated[0] or truncated[0])
        # The VecEnv already auto-reset a finished env: report the observation it ended in.
        shown = info["final_obs"] if done else obs
        step_info = {"success": bool(info["success"][0])}
        return (_to_numpy(shown, 0, self._flat), float(reward[0]), bool(terminated[0]),
                bool(truncated[0]), step_info)

    def render(self):
        return self.vec.render([0])[0]

    def close(self):
        self.vec.close()


def SB3VecEnv(env: MujocoVecEnv):  # noqa: N802 - a factory named like the class it returns
    """Wrap a VecEnv for Stable-Baselines3 (the `sb3` extra)."""
    try:
        from stable_baselines3.common.vec_env.base_vec_env import VecEnv
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "SB3VecEnv needs Stable-Baselines3: pip install 'embodied[sb3]'"
        ) from e

    class _SB3VecEnv(VecEnv):
        def __init__(self, vec: MujocoVecEnv) -> None:
            self.vec = vec
            self._flat = not vec.cameras
            action_space = gym.spaces.Box(-1.0, 1.0, (vec.action_dim,), np.float32)
            super().__init__(vec.num_envs, _observation_space(vec), action_space)
            self._actions: torch.Tensor | None = None
            self._seed: int | None = None

        def reset(self):
            obs = self.vec.reset(seed=self._seed)
            self._seed = None
            return _to_numpy(obs, slice(None), self._flat)

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = torch.as_tensor(np.asarray(actions, dtype=np.float64))

        def step_wait(self):
            obs, reward, terminated, truncated, info = self.vec.step(self._actions)
            done = (terminated | truncated).cpu().numpy()
            infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
            success = info["success"].cpu().numpy()
            for i in np.flatnonzero(done):
                infos[i]["terminal_observation"] = _to_numpy(info["final_obs"], i, self._flat)
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                infos[i]["is_success"] = bool(info["episode_success"][i])
                infos[i]["episode"] = {"r": float(info["episode_return"][i]),
                                       "l": int(info["episode_length"][i])}
            for i, s in enumerate(success):
                infos[i]["success"] = bool(s)
            return (_to_numpy(obs, slice(None), self._flat), reward.cpu().numpy(), done, infos)

        def close(self) -> None:
            self.vec.close()

        def seed(self, seed: int | None = None):
            self._seed = seed
            return [seed] * self.num_envs

        def get_images(self):
            return list(self.vec.render(list(range(self.num_envs))))

        def get_attr(self, attr_name, indices=None):
            return [getattr(self.vec, attr_name)] * len(self._get_indices(indices))

        def set_attr(self, attr_name, value, indices=None) -> None:
            setattr(self.vec, attr_name, value)

        def env_method(self, method_name, *args, indices=None, **kwargs):
            return [getattr(self.vec, method_name)(*args, **kwargs)
                    for _ in self._get_indices(indices)]

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * len(self._get_indices(indices))

    return _SB3VecEnv(env)
