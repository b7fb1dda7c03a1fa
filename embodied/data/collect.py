"""`embodied collect`: run a task's expert in batched envs, write a dataset and videos."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embodied.core.progress import Progress
from embodied.data.dataset import DatasetWriter, Feature
from embodied.envs import make_env
from embodied.envs.video import write_video


def dataset_features(env: Any) -> dict[str, Feature]:
    """The frame layout of datasets written from `env`: LeRobot names, our dims.

    State dims are named after the task's `obs_layout` where it has one (ee_pos_0, ...,
    gripper); other vectors get the writer's defaults (state_0, ..., action_0, ...).
    """
    features = {
        "observation.state": Feature("float32", (env.obs_dim,), _state_names(env)),
        "action": Feature("float32", (env.action_dim,)),
        "next.reward": Feature("float32", ()),
        "next.done": Feature("bool", ()),
        "next.terminated": Feature("bool", ()),
        "next.success": Feature("bool", ()),
    }
    for cam in env.cameras:
        features[f"observation.images.{cam}"] = Feature("image", (env.image_size,) * 2 + (3,))
    return features


class EpisodeBuffers:
    """Per-env frames of the episodes in progress, as (max_steps, num_envs, ...) arrays."""

    def __init__(self, features: dict[str, Feature], max_steps: int, num_envs: int) -> None:
        self.arrays = {
            key: np.zeros((max_steps, num_envs, *f.shape),
                          dtype=np.uint8 if f.dtype == "image" else f.dtype)
            for key, f in features.items()
        }
        self.length = np.zeros(num_envs, dtype=np.int64)
        self._envs = np.arange(num_envs)

    def append(self, frame: dict[str, torch.Tensor]) -> None:
        for key, value in frame.items():
            self.arrays[key][self.length, self._envs] = value.cpu().numpy()
        self.length += 1

    def pop(self, env: int) -> dict[str, np.ndarray]:
        n = self.length[env]
        self.length[env] = 0
        return {key: array[:n, env].copy() for key, array in self.arrays.items()}


def collect(task: str, episodes: int, out: str | Path, *, num_envs: int = 16,
            noise: float = 0.0, seed: int = 0, only_success: bool = False,
            cameras: tuple[str, ...] = (), image_size: int = 96,
            video_dir: str | Path | None = None,
            video_episodes: int = 2, nthread: int = 0, task_options: dict | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Fill the dataset at `out` up to `episodes` expert episodes of `task`; return a summary.

    Episodes already in the dataset count (a killed run, run again, continues it), and the
    seeds move on with their number, so a continued run repeats none of them.
    """
    from embodied.data.experts import TRAINED_EXPERTS, make_expert

    env = make_env(task, num_envs=num_envs, cameras=tuple(cameras), image_size=image_size,
                   nthread=nthread, **(task_options or {}))
    features = dataset_features(env)
    fps = int(round(1.0 / env.dt))
    buffers = EpisodeBuffers(features, env.max_episode_steps, num_envs)
    frames: list[np.ndarray] = []
    videos: list[str] = []
    seen = successes = 0
    start = time.time()
    with DatasetWriter(out, features, fps=fps, robot_type=f"embodied/{task}") as writer:
        kept = writer.num_episodes
        seed += kept * 1_000_003  # a fresh stream for a continued dataset
        generator = torch.Generator().manual_seed(seed + 1)
        expert_options = {} if task in TRAINED_EXPERTS else {"task_options": task_options}
        expert = make_expert(task, num_envs=num_envs, noise=noise, generator=generator,
                             **expert_options)
        obs = env.reset(seed=seed)
        expert.reset(torch.arange(num_envs))
        bar = Progress(episodes, initial=min(kept, episodes), desc=f"collect {task}",
                       unit="episodes", enabled=progress)
        while kept < episodes:
            if video_dir is not None and len(videos) < video_episodes:
                frames.append(env.render([0])[0])
            action = expert.act(obs["state"])
            next_obs, reward, terminated, truncated, info = env.step(action)
            done = terminated | truncated
            frame = {"observation.state": obs["state"], "action": action,
                     "next.reward": reward, "next.done": done, "next.terminated": terminated,
                     "next.success": info["success"]}
            frame.update({f"observation.images.{c}": obs[f"rgb_{c}"] for c in env.cameras})
            buffers.append(frame)
            for i in done.nonzero().flatten().tolist():
                episode = buffers.pop(i)
                success = bool(info["episode_success"][i])
                seen += 1
                successes += success
                if i == 0 and video_dir is not None and len(videos) < video_episodes:
                    path = Path(video_dir) / f"{task}_episode_{len(videos):03d}.mp4"
                    videos.append(str(write_video(path, frames, fps)))
                    frames = []
                if kept < episodes and (success or not only_success):
                    writer.add_episode(episode, task=_task_text(env))
                    kept += 1
                    bar.update(1)
            if done.any():
                expert.reset(done.nonzero().flatten())
            obs = next_obs
            bar.set_postfix(success=f"{successes / max(seen, 1):.2f}")
        total_frames = writer.num_frames
    bar.close()
    env.close()
    return {"task": task, "episodes": kept, "episodes_seen": seen,
            "success_rate": successes / max(seen, 1), "frames": total_frames,
            "dataset": str(out), "videos": videos, "seconds": round(time.time() - start, 1)}


def _state_names(env: Any) -> list[str] | None:
    layout = getattr(getattr(env, "task", None), "obs_layout", None)
    if not layout:
        return None
    names = [f"state_{i}" for i in range(env.obs_dim)]  # dims the layout leaves out
    for key, part in layout.items():
        dims = range(env.obs_dim)[part]
        for j, i in enumerate(dims):
            names[i] = key if len(dims) == 1 else f"{key}_{j}"
    return names


def _task_text(env: Any) -> str:
    return env.task.description or env.task.name
