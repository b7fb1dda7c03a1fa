"""Stable-Baselines3 trains on our VecEnv through the adapter."""

import pytest
import torch

from embodied.envs import make_env
from embodied.envs.adapters import SB3VecEnv

sb3 = pytest.importorskip("stable_baselines3", reason="the sb3 extra is not installed")


def success_rate(model, episodes=64):
    env = make_env("reach", num_envs=episodes)
    obs = env.reset(seed=123)
    result = torch.zeros(episodes, dtype=torch.bool)
    finished = torch.zeros(episodes, dtype=torch.bool)
    for _ in range(env.max_episode_steps):
        action, _ = model.predict(obs["state"].numpy(), deterministic=True)
        obs, _, terminated, truncated, info = env.step(torch.as_tensor(action))
        new = (terminated | truncated) & ~finished
        if new.any():
            result[new] = info["episode_success"][new]
            finished |= new
    assert finished.all()
    return result.float().mean().item()


def test_sb3_ppo_learns_reach():
    torch.manual_seed(0)
    venv = SB3VecEnv(make_env("reach", num_envs=16))
    model = sb3.PPO("MlpPolicy", venv, n_steps=64, batch_size=256, n_epochs=5,
                    learning_rate=1e-3, seed=0, device="cpu")
    before = success_rate(model)
    model.learn(8192)
    after = success_rate(model)
    assert after >= before + 0.3, (before, after)
