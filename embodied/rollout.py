"""Run a chunked policy in batched envs: per-env action queues and observation histories.

Each env plays its own chunk; an env whose episode ends drops the rest of its chunk and
its history (no state leaks across episodes, unlike a queue shared by all envs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from embodied.core.errors import ConfigError
from embodied.envs import make_env
from embodied.envs.video import write_video


def check_policy_fits(policy_config: Any, obs_dim: int, action_dim: int, task: str) -> None:
    """A policy made for another task's dims is a user error, named before anything runs."""
    have = (policy_config.obs_dim, policy_config.action_dim)
    if have != (obs_dim, action_dim):
        raise ConfigError(f"the policy is for obs {have[0]} / action {have[1]} dims, task "
                          f"{task!r} has {obs_dim} / {action_dim}: pass the task it was "
                          f"trained on (task=...), or a policy trained on {task!r}")


class ChunkRunner:
    """Per-env chunk queue and observation history for a policy with (To, Ta)."""

    def __init__(self, num_envs: int, n_obs_steps: int, n_action_steps: int) -> None:
        self.num_envs, self.To, self.Ta = num_envs, n_obs_steps, n_action_steps
        self.queue: torch.Tensor | None = None
        self.cursor = torch.full((num_envs,), n_action_steps)  # Ta = empty: plan next step
        self.history: dict[str, torch.Tensor] = {}

    def start(self, obs: dict[str, torch.Tensor], ids: torch.Tensor | None = None) -> None:
        """New episodes in `ids` (default all): history = the first observation, repeated."""
        for key, value in obs.items():
            rep = value.unsqueeze(1).expand(-1, self.To, *value.shape[1:])
            if ids is None or key not in self.history:
                self.history[key] = rep.clone()
            else:
                self.history[key][ids] = rep[ids]
        self.cursor[slice(None) if ids is None else ids] = self.Ta

    def observe(self, obs: dict[str, torch.Tensor]) -> None:
        for key, value in obs.items():
            self.history[key] = torch.cat([self.history[key][:, 1:], value.unsqueeze(1)], 1)

    def needs_plan(self) -> torch.Tensor:
        return self.cursor >= self.Ta

    def history_of(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[ids] for k, v in self.history.items()}

    def load(self, ids: torch.Tensor, chunk: torch.Tensor) -> None:
        if self.queue is None:
            self.queue = torch.zeros((self.num_envs, *chunk.shape[1:]), dtype=chunk.dtype)
        self.queue[ids] = chunk
        self.cursor[ids] = 0

    def next_actions(self) -> torch.Tensor:
        actions = self.queue[torch.arange(self.num_envs), self.cursor]
        self.cursor += 1
        return actions


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
    for batch, start in enumerate(range(0, episodes, max_envs)):
        n = min(max_envs, episodes - start)
        env = make_env(task, num_envs=n, cameras=tuple(cfg.cameras), image_size=cfg.image_size,
                       nthread=nthread, **(task_options or {}))
        check_policy_fits(cfg, env.obs_dim, env.action_dim, task)
        obs = env.reset(seed=seed + batch)
        runner = ChunkRunner(n, cfg.n_obs_steps, cfg.n_action_steps)
        runner.start(obs)
        policy.reset(n)
        finished = torch.zeros(n, dtype=torch.bool)
        record = video_path is not None and batch == 0
        while not finished.all():
            plan = runner.needs_plan().nonzero().flatten()
            if len(plan):
                runner.load(plan, policy.act(runner.history_of(plan), generator=generator,
                                             deterministic=deterministic))
            if record and not finished[0]:
                frames.append(env.render([0])[0])
            obs, _, terminated, truncated, info = env.step(runner.next_actions())
            runner.observe(obs)
            done = terminated | truncated
            policy.end_episodes(done)
            if done.any():
                ids = done.nonzero().flatten()
                new = ids[~finished[ids]]
                successes += info["episode_success"][new].tolist()
                returns += info["episode_return"][new].tolist()
                lengths += info["episode_length"][new].tolist()
                finished[new] = True
                runner.start(obs, ids)
        env.close()
    if video_path is not None and frames:
        write_video(video_path, frames, fps=int(round(1.0 / env.dt)))
    return {"task": task, "episodes": len(successes), "seed": seed,
            "success_rate": float(np.mean(successes)), "return_mean": float(np.mean(returns)),
            "length_mean": float(np.mean(lengths))}
