"""Evaluation protocol: the success rate of a policy over the first episode of each env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from embodied.core.errors import ConfigError
from embodied.envs import make_env
from embodied.envs.video import write_video
from embodied.rollout.collector import Collector


def check_policy_fits(policy_config: Any, obs_dim: int, action_dim: int, task: str) -> None:
    """A policy made for another task's dims is a user error, named before anything runs."""
    have = (policy_config.obs_dim, policy_config.action_dim)
    if have != (obs_dim, action_dim):
        raise ConfigError(f"the policy is for obs {have[0]} / action {have[1]} dims, task "
                          f"{task!r} has {obs_dim} / {action_dim}: pass the task it was "
                          f"trained on (task=...), or a policy trained on {task!r}")


@torch.no_grad()
def evaluate(policy: Any, task: str, episodes: int = 50, *, max_envs: int = 64, seed: int = 0,
             task_options: dict | None = None, video_path: str | Path | None = None,
             deterministic: bool = True, nthread: int = 0) -> dict[str, Any]:
    """Success rate of `policy` over `episodes` episodes: the first episode of each env.

    Protocol: envs in batches of at most `max_envs`; batch b resets with seed `seed + b`;
    policy noise from torch.Generator(seed). Counting first episodes only avoids favouring
    short (early-success) episodes.
    """
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    policy.eval()
    cfg = policy.config
    generator = torch.Generator().manual_seed(seed)
    successes, returns, lengths = [], [], []
    frames: list[np.ndarray] = []
    dt = None
    for batch, start in enumerate(range(0, episodes, max_envs)):
        n = min(max_envs, episodes - start)
        env = make_env(task, num_envs=n, cameras=tuple(cfg.cameras), image_size=cfg.image_size,
                       nthread=nthread, **(task_options or {}))
        check_policy_fits(cfg, env.obs_dim, env.action_dim, task)
        collector = Collector(env, policy, generator)
        collector.reset(seed=seed + batch)
        record = video_path is not None and batch == 0
        result = collector.first_episodes(deterministic, video_env=0 if record else None)
        successes.append(result["success"])
        returns.append(result["return"])
        lengths.append(result["length"])
        frames += result["frames"]
        dt = env.dt
        env.close()
    if video_path is not None and frames:
        write_video(video_path, frames, fps=int(round(1.0 / dt)))
    success, ret, length = torch.cat(successes), torch.cat(returns), torch.cat(lengths)
    return {"task": task, "episodes": len(success), "seed": seed,
            "success_rate": float(success.double().mean()),
            "return_mean": float(ret.mean()), "length_mean": float(length.double().mean())}
