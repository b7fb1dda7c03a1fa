"""Every registered task: shapes, dtypes, no NaN, partial resets, batched truncation, seeding."""

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from embodied.envs import get_task_class, make_env, task_names
from embodied.envs.adapters import GymEnv

TASKS = task_names()
N = 4


def random_actions(env, generator):
    return torch.rand((env.num_envs, env.action_dim), generator=generator) * 2 - 1


def sim_state(env):
    return torch.cat([env.sim.field("qpos"), env.sim.field("qvel")], dim=-1).clone()


def test_builtin_tasks_are_registered():
    for name in ["reach", "hopper", "walker2d", "halfcheetah", "ant"]:
        assert name in TASKS


@pytest.mark.parametrize("task", TASKS)
def test_reset_and_step_shapes_dtypes_no_nan(task):
    env = make_env(task, num_envs=N)
    obs = env.reset(seed=0)
    assert obs["state"].shape == (N, env.obs_dim) and obs["state"].dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(random_actions(env, g))
        assert obs["state"].shape == (N, env.obs_dim) and obs["state"].dtype == torch.float32
        assert reward.shape == (N,) and reward.dtype == torch.float32
        assert terminated.dtype == torch.bool and truncated.dtype == torch.bool
        assert info["success"].shape == (N,) and info["success"].dtype == torch.bool
        assert torch.isfinite(obs["state"]).all() and torch.isfinite(reward).all()
        assert not (terminated & truncated).any()


@pytest.mark.parametrize("task", TASKS)
def test_partial_reset_leaves_other_envs_untouched(task):
    env = make_env(task, num_envs=N)
    env.reset(seed=0)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        env.step(random_actions(env, g))
    before = sim_state(env)
    obs_before = env._observe()["state"].clone()
    obs = env.reset(env_ids=torch.tensor([1, 2]))
    after = sim_state(env)
    kept = torch.tensor([0, 3])
    assert torch.equal(after[kept], before[kept])
    assert torch.equal(obs["state"][kept], obs_before[kept])
    assert not torch.equal(after[1:3], before[1:3])
    assert (env._elapsed[1:3] == 0).all() and (env._elapsed[kept] == 3).all()


@pytest.mark.parametrize("task", TASKS)
def test_truncation_is_batched_per_env(task):
    horizon = 5
    options = {"max_episode_steps": horizon}
    if hasattr(get_task_class(task), "terminate_on_success"):
        options["terminate_on_success"] = False  # keep episodes running to the horizon
    env = make_env(task, num_envs=N, **options)
    env.reset(seed=0)
    zero = torch.zeros((N, env.action_dim))
    finished_at = {i: [] for i in range(N)}
    env.step(zero)
    env.step(zero)
    env.reset(env_ids=torch.tensor([0]))  # env 0 now runs two steps behind the others
    for t in range(2, 2 + 2 * horizon):
        _, _, terminated, truncated, info = env.step(zero)
        for i in truncated.nonzero().flatten().tolist():
            finished_at[i].append(t)
            assert info["episode_length"][i] == horizon
        assert not terminated.any()  # zero actions: nothing falls within 12 steps
    assert finished_at[0] == [horizon + 1, 2 * horizon + 1]
    for i in range(1, N):
        assert finished_at[i] == [horizon - 1, 2 * horizon - 1]


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_rollout(task):
    rollouts = []
    for _ in range(2):
        env = make_env(task, num_envs=N)
        obs = [env.reset(seed=7)["state"]]
        g = torch.Generator().manual_seed(3)
        for _ in range(40):  # long enough for some auto-resets in the falling tasks
            obs.append(env.step(random_actions(env, g))[0]["state"])
        rollouts.append(torch.stack(obs))
    assert torch.equal(rollouts[0], rollouts[1])
    other = make_env(task, num_envs=N).reset(seed=8)["state"]
    assert not torch.equal(other, rollouts[0][0])


@pytest.mark.parametrize("task", TASKS)
def test_single_env_view_passes_gymnasium_checker(task):
    env = GymEnv(task, render_mode="rgb_array")
    check_env(env, skip_render_check=True)
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[-1] == 3 and frame.dtype == np.uint8
    assert frame.std() > 0  # something was drawn


def test_final_observation_is_kept_on_auto_reset():
    env = make_env("hopper", num_envs=N)
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        obs, _, terminated, truncated, info = env.step(random_actions(env, g))
        if terminated.any():
            i = int(terminated.nonzero()[0])
            final = info["final_obs"]["state"][i]
            assert final[0] < 0.7 or abs(final[1]) > 0.2 or final.abs().max() >= 10  # fell
            assert not torch.equal(final, obs["state"][i])  # obs is the new episode's start
            assert env._elapsed[i] == 0
            return
    pytest.fail("no hopper fell under random actions in 200 steps")


def test_bad_actions_get_clear_errors():
    env = make_env("reach", num_envs=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        env.step(torch.full((2, 2), float("nan")))


def test_unknown_task_and_option_errors_name_the_fix():
    from embodied.core.errors import ConfigError

    with pytest.raises(ConfigError, match="registered tasks"):
        make_env("hoper")
    with pytest.raises(ConfigError, match="options it takes"):
        make_env("reach", goal_radious=0.1)


def test_camera_observations():
    env = make_env("reach", num_envs=2, cameras=["top"], image_size=32)
    obs = env.reset(seed=0)
    assert obs["rgb_top"].shape == (2, 32, 32, 3) and obs["rgb_top"].dtype == torch.uint8
    obs, *_ = env.step(torch.zeros(2, 2))
    assert obs["rgb_top"].float().std() > 0


def test_task_options_are_attributes_not_hooks():
    from embodied.core.errors import ConfigError
    from embodied.envs.registry import make_task

    assert make_task("push_cube", reward_type="dense").reward_type == "dense"  # inherited
    with pytest.raises(ConfigError, match="no option 'observe'.*reward_type"):
        make_task("push_cube", observe=3)  # a hook, not an option


@pytest.mark.parametrize("task", ["hopper", "ant"])
def test_batch_without_per_env_data_gives_the_same_rollout(task, monkeypatch):
    """Locomotion tasks run on a batch with one MjData per thread, not per env (faster):
    the rollout, auto-resets included, is bit-identical to the per-env batch's."""
    def rollout():
        env = make_env(task, num_envs=N)
        steps = [env.reset(seed=3)["state"]]
        g = torch.Generator().manual_seed(4)
        for _ in range(60):
            obs, reward, terminated, truncated, _ = env.step(random_actions(env, g))
            steps += [obs["state"], reward, terminated, truncated]
        return env.sim._batch.persistent, steps

    fast = rollout()
    monkeypatch.setattr(get_task_class(task), "needs_env_data", True)
    per_env = rollout()
    assert not fast[0] and per_env[0]
    assert all(torch.equal(a, b) for a, b in zip(fast[1], per_env[1], strict=True))


@pytest.mark.parametrize("task", ["ant", "pick_place"])
def test_backend_reset_leaves_what_batch_reset_does(task):
    env = make_env(task, num_envs=N)
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        env.step(random_actions(env, g))
    batch, ids = env.sim._batch, np.array([1, 3])
    env.sim.reset(ids)
    ours = batch.state[ids].copy()
    batch.reset(ids=ids, stage=0)
    np.testing.assert_array_equal(ours, batch.state[ids])


def test_mujoco_error_names_the_env():
    from mujoco.batch import SimulationError

    env = make_env("ant", num_envs=N)
    env.reset(seed=0)
    env.sim.model_field("sensor_type")[2] = 999  # an invalid sensor: mj_step raises in env 2
    with pytest.raises(SimulationError, match=r"simulations \(2\)"):
        env.step(torch.zeros(N, env.action_dim))
