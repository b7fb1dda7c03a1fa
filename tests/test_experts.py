"""Experts of the template task and of Hopper (trained, shipped): success >= 95% noise-free."""

import pytest

from embodied.core.errors import ConfigError
from embodied.core.paths import ASSETS_DIR
from embodied.data.experts import TRAINED_EXPERTS, make_expert
from embodied.rollout.experts import expert_success


def first_episode_success(task, num_envs, noise=0.0, seed=0):
    return expert_success(task, num_envs, noise=noise, seed=seed).float().mean().item()


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


def test_scripted_expert_follows_the_task_options():
    from embodied.data.experts import make_expert

    default = make_expert("push_cube", 1)
    tuned = make_expert("push_cube", 1, task_options={"max_delta": default.max_delta / 2})
    assert tuned.max_delta == default.max_delta / 2
