"""`embodied collect`: the dataset it writes replays exactly; a kill keeps finished episodes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from embodied.data.collect import collect, dataset_features
from embodied.data.dataset import EpisodeDataset
from embodied.envs import make_env


def run_cli(*args, **kwargs):
    cmd = [sys.executable, "-m", "embodied.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


def test_collected_dataset_replays_exactly(tmp_path):
    # One env: episodes follow each other, so replaying the recorded actions from the same
    # seed must reproduce every recorded observation, reward and flag bit for bit.
    summary = collect("reach", 5, tmp_path / "ds", num_envs=1, noise=0.3, seed=3,
                      progress=False)
    data = EpisodeDataset(tmp_path / "ds")
    assert data.num_episodes == summary["episodes"] == 5
    env = make_env("reach", num_envs=1)
    obs = env.reset(seed=3)
    for i in range(data.num_episodes):
        ep = data.episode(i)
        for t in range(len(ep["action"])):
            np.testing.assert_array_equal(ep["observation.state"][t], obs["state"][0].numpy())
            obs, reward, terminated, truncated, info = env.step(
                torch.as_tensor(ep["action"][t][None]))
            assert ep["next.reward"][t] == reward[0].item()
            assert ep["next.done"][t] == bool(terminated[0] | truncated[0])
            assert ep["next.terminated"][t] == bool(terminated[0])
            assert ep["next.success"][t] == bool(info["success"][0])
        assert ep["next.done"][-1] and not ep["next.done"][:-1].any()
    assert data.fps == 25 and data.features["observation.state"].shape == (env.obs_dim,)
    # reach has no obs_layout: the writer's per-dim names, as LeRobot's info.json has them
    assert data.features["observation.state"].names == [f"state_{i}" for i in range(env.obs_dim)]
    assert data.features["action"].names == [f"action_{i}" for i in range(env.action_dim)]


def test_state_names_follow_the_task_obs_layout():
    task = SimpleNamespace(obs_layout={"ee_pos": slice(0, 3), "gripper": slice(3, 4)})
    env = SimpleNamespace(obs_dim=5, action_dim=2, cameras=("front",), image_size=8, task=task)
    features = dataset_features(env)
    assert features["observation.state"].names == ["ee_pos_0", "ee_pos_1", "ee_pos_2",
                                                   "gripper", "state_4"]  # a dim left out
    assert features["observation.images.front"].shape == (8, 8, 3)


def test_cli_collect_writes_dataset_video_and_run_dir(tmp_path):
    out, run = tmp_path / "ds", tmp_path / "run"
    result = run_cli("collect", "task=reach", "episodes=6", "num_envs=4", f"out={out}",
                     f"run_dir={run}", "video=true", "video_episodes=1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 6 and summary["success_rate"] >= 0.95
    assert EpisodeDataset(out).num_episodes == 6
    video = Path(summary["videos"][0])
    assert video.exists() and video.stat().st_size > 1000
    assert (run / "config.yaml").exists() and (run / "summary.json").exists()


def test_cli_reports_bad_config_clearly(tmp_path):
    result = run_cli("collect", "task=no_such_task", f"out={tmp_path}")
    assert result.returncode != 0
    assert "no_such_task" in result.stderr and "reach" in result.stderr
    result = run_cli("frobnicate")
    assert result.returncode == 2 and "unknown command" in result.stderr


def test_killed_collection_keeps_every_finished_episode(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "embodied.cli", "collect", "task=reach", "episodes=100000",
           "num_envs=4", "noise=0.5", f"out={out}", f"run_dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MUJOCO_GL": "egl"})
    info = out / "meta" / "info.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if info.exists() and json.loads(info.read_text())["total_episodes"] >= 6:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("collection wrote fewer than 6 episodes in 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    data = EpisodeDataset(out)
    assert data.num_episodes >= 6
    lengths = data.episode_lengths()
    for i in range(data.num_episodes):
        ep = data.episode(i)
        assert len(ep["action"]) == lengths[i] and ep["next.done"][-1]
    assert data.num_frames == lengths.sum()


def test_running_collect_again_continues_without_repeating(tmp_path):
    out = tmp_path / "ds"
    collect("reach", 2, out, num_envs=2, noise=0.3, seed=0, progress=False)
    first = EpisodeDataset(out).episode(0)["observation.state"]
    summary = collect("reach", 4, out, num_envs=2, noise=0.3, seed=0, progress=False)
    data = EpisodeDataset(out)
    assert summary["episodes"] == 4 and data.num_episodes == 4
    for i in (2, 3):  # the continued episodes start elsewhere than the first ones
        assert not np.array_equal(data.episode(i)["observation.state"][0], first[0])
    assert collect("reach", 4, out, num_envs=2, progress=False)["episodes"] == 4  # full: no-op
    assert EpisodeDataset(out).num_episodes == 4
