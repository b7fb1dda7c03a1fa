"""Experts of the template task and of Hopper (trained, shipped): success >= 95% noise-free."""

import pytest
import torch

from embodied.core.errors import ConfigError
from embodied.core.paths import ASSETS_DIR
from embodied.data.experts import TRAINED_EXPERTS, make_expert
from embodied.envs import make_env


def first_episode_success(task, num_envs, noise=0.0, seed=0):
    env = make_env(task, num_envs=num_envs)
    expert = make_expert(task, num_envs, noise=noise,
                         generator=torch.Generator().manual_seed(seed))
    obs = env.reset(seed=seed)["state"]
    result = torch.zeros(num_envs, dtype=torch.bool)
    finished = torch.zeros(num_envs, dtype=torch.bool)
    while not finished.all():
        out, _, terminated, truncated, info = env.step(expert.act(obs))
        obs = out["state"]
        done = terminated | truncated
        new = done & ~finished
        if new.any():
            result[new] = info["episode_success"][new]
            finished |= new
            expert.reset(done.nonzero().squeeze(-1))
    return result.float().mean().item()


def test_reach_expert():
    assert first_episode_success("reach", 100) >= 0.95


def test_hopper_expert_hops_forward():
    assert (ASSETS_DIR / TRAINED_EXPERTS["hopper"]).exists()  # shipped with the package
    assert first_episode_success("hopper", 40) >= 0.95
    # Noise makes demonstrations imperfect: success drops but does not vanish.
    assert 0.0 < first_episode_success("hopper", 40, noise=0.5, seed=1) < 1.0


def test_unknown_expert_is_a_clear_error():
    with pytest.raises(ConfigError, match="experts exist for"):
        make_expert("walker2d", 4)
