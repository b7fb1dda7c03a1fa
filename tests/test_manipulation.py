"""Manipulation tasks and their scripted experts: experts solve the tasks, noisy experts are
imperfect but not broken, the gripper really carries the cube, random actions stay sane."""

import mujoco
import pytest
import torch

from embodied.core.errors import ConfigError
from embodied.data.experts import expert_names, make_expert
from embodied.envs import make_env, task_names
from embodied.rollout.experts import expert_success

TASKS = ["push_cube", "pick_place", "peg_insert"]
# Noise at which each expert is clearly imperfect (measured: push ~0.8, pick ~0.94, peg ~0.7).
NOISY = {"push_cube": 0.7, "pick_place": 0.7, "peg_insert": 0.4}
# Resting height of the object's centre when lying on the table on its smallest side.
MIN_HALF = {"push_cube": 0.02, "pick_place": 0.02, "peg_insert": 0.01}


def first_episode_success(task: str, num_envs: int, noise: float, seed: int = 0) -> torch.Tensor:
    return expert_success(task, num_envs, noise=noise, seed=seed)


def test_registered_with_layout_and_cameras():
    assert set(TASKS) <= set(task_names())
    assert set(TASKS) <= set(expert_names())
    for task in TASKS:
        env = make_env(task, num_envs=2)
        layout = env.task.obs_layout
        covered = sorted(i for s in layout.values() for i in range(s.start, s.stop))
        assert covered == list(range(env.obs_dim)), f"{task}: obs_layout must tile the obs"
        assert env.action_dim == 4
        for cam in env.task.cameras:
            assert mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, cam) >= 0
        assert env.task.video_camera() in env.task.cameras
        assert 20 <= 1 / env.dt <= 25  # control rate


@pytest.mark.parametrize("task", TASKS)
def test_layout_matches_simulation(task):
    env = make_env(task, num_envs=4)
    obs = env.reset(seed=3)["state"].double()
    for _ in range(5):
        obs = env.step(torch.rand(4, 4) * 2 - 1)[0]["state"].double()
    layout, task_obj = env.task.obs_layout, env.task
    torch.testing.assert_close(obs[:, layout["ee_pos"]], task_obj.ee_pos(env.sim), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(obs[:, layout["obj_pos"]], task_obj.obj_pos(env.sim), atol=1e-6,
                               rtol=0)
    rel = obs[:, layout["goal"]] - obs[:, layout["obj_pos"]]
    torch.testing.assert_close(obs[:, layout["goal_rel_obj"]], rel, atol=1e-6, rtol=0)
    assert (obs[:, layout["obj_quat"]][:, 0] >= 0).all()


@pytest.mark.parametrize("task", TASKS)
def test_expert_solves_task(task):
    success = first_episode_success(task, num_envs=100, noise=0.0)
    assert success.float().mean() >= 0.95


@pytest.mark.parametrize("task", TASKS)
def test_noisy_expert_is_imperfect_not_broken(task):
    rate = first_episode_success(task, num_envs=100, noise=NOISY[task]).float().mean()
    assert 0.1 < rate < 1.0


def test_pick_place_gripper_carries_cube():
    """The cube rises only while both pads touch it (a real grasp, nothing teleported)."""
    n = 8
    env = make_env("pick_place", num_envs=n, terminate_on_success=False)
    expert = make_expert("pick_place", n, generator=torch.Generator().manual_seed(0))
    obs = env.reset(seed=0)["state"]
    layout, model = env.task.obs_layout, env.model
    pads = {mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, g) for g in ("pad_l", "pad_r")}
    cube = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "cube")
    lifted = torch.zeros(n, dtype=torch.bool)
    data = mujoco.MjData(model)
    for _ in range(40):
        obs = env.step(expert.act(obs))[0]["state"]
        cube_z = obs[:, layout["obj_pos"]][:, 2]
        for i in (cube_z > 0.045).nonzero().squeeze(-1).tolist():  # 2.5 cm off the table
            env.sim.get_data(i, data)
            touching = {int(c.geom1 + c.geom2 - cube) for c in data.contact[:data.ncon]
                        if cube in (c.geom1, c.geom2)}
            assert pads <= touching, f"env {i}: cube in the air without both pads on it"
            assert abs(float(obs[i, layout["obj_rel_ee"]][2])) < 0.015  # held at the hand
            lifted[i] = True
    assert lifted.all()


@pytest.mark.parametrize("task", TASKS)
def test_random_and_pressing_actions_stay_physical(task):
    """No NaN, rewards in [0, 1], and the object never sinks into the table, even with the
    hand driven down onto it."""
    n = 16
    env = make_env(task, num_envs=n, reward_type="dense")
    layout = env.task.obs_layout
    gen = torch.Generator().manual_seed(0)
    obs = env.reset(seed=0)["state"]
    for _ in range(120):
        action = torch.rand((n, 4), generator=gen) * 2 - 1
        rel = obs[: n // 2, layout["obj_rel_ee"]]
        action[: n // 2, :2] = (rel[:, :2] / 0.015).clamp(-1, 1)  # over the object...
        action[: n // 2, 2] = -1.0  # ...and press down
        out, reward, _, _, info = env.step(action)
        obs = out["state"]
        assert torch.isfinite(obs).all()
        assert ((reward >= 0) & (reward <= 1)).all()
        assert (obs[:, layout["obj_pos"]][:, 2] > MIN_HALF[task] - 0.003).all()


def test_same_seed_same_rollout():
    def rollout():
        env = make_env("peg_insert", num_envs=4)
        expert = make_expert("peg_insert", 4, noise=0.3,
                             generator=torch.Generator().manual_seed(7))
        obs = env.reset(seed=7)["state"]
        states = [obs]
        for _ in range(30):
            obs = env.step(expert.act(obs))[0]["state"]
            states.append(obs)
        return torch.stack(states)

    assert torch.equal(rollout(), rollout())


def test_dense_reward_rises_along_expert_episode():
    n = 16
    env = make_env("pick_place", num_envs=n, reward_type="dense")
    expert = make_expert("pick_place", n, generator=torch.Generator().manual_seed(0))
    obs = env.reset(seed=0)["state"]
    out, first, _, _, _ = env.step(expert.act(obs))
    obs, best = out["state"], first.clone()
    for _ in range(60):
        out, reward, terminated, truncated, _ = env.step(expert.act(obs))
        obs = out["state"]
        best = torch.maximum(best, reward)
        expert.reset((terminated | truncated).nonzero().squeeze(-1))
    assert (first < 0.5).all() and (best == 1.0).all()


def test_bad_options_are_reported():
    with pytest.raises(ConfigError, match="reward_type"):
        make_env("push_cube", num_envs=1, reward_type="shaped")
    with pytest.raises(ConfigError, match="no expert for task"):
        make_expert("ant", 1)


@pytest.mark.parametrize("task", TASKS)
def test_video_camera_frames_gripper_object_and_goal(task):
    """Every point that matters projects well inside the video frame (10% margin), over
    many initial states: the workspace centre, not the floor, fills the picture."""
    import numpy as np

    env = make_env(task, num_envs=32)
    env.reset(seed=5)
    camera = env.model.cam(env.task.video_camera())
    pos = env.sim.get_data(0).cam_xpos[camera.id]
    rot = env.sim.get_data(0).cam_xmat[camera.id].reshape(3, 3)  # columns: x, y, -forward
    height, width = env.render_size
    focal = 0.5 * height / np.tan(np.radians(camera.fovy[0]) / 2)
    task_ = env.task
    points = np.concatenate([task_.ee_pos(env.sim).numpy(), task_.obj_pos(env.sim).numpy(),
                             task_._goal.numpy()])
    local = (points - pos) @ rot
    assert (local[:, 2] < 0).all()  # in front of the camera
    u = width / 2 + focal * local[:, 0] / -local[:, 2]
    v = height / 2 - focal * local[:, 1] / -local[:, 2]
    assert (u > 0.1 * width).all() and (u < 0.9 * width).all(), u
    assert (v > 0.1 * height).all() and (v < 0.9 * height).all(), v
