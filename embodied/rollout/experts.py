"""Experts (scripted or trained) driven by the collector like any policy."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from embodied.data.experts import make_expert
from embodied.envs import make_env
from embodied.rollout.collector import Collector


class ExpertPolicy:
    """A per-step expert (`act(state [N, Do]) -> [N, Da]`, `reset(ids)`) as a one-action
    chunk policy: the collector restarts the expert of each env whose episode ended."""

    dtype = torch.float32

    def __init__(self, expert: Any, obs_dim: int, action_dim: int) -> None:
        self.expert = expert
        self.config = SimpleNamespace(obs_dim=obs_dim, action_dim=action_dim, n_obs_steps=1,
                                      n_action_steps=1, cameras=[], image_size=96)

    def eval(self) -> ExpertPolicy:
        return self

    def reset(self, num_envs: int) -> None:
        self.expert.reset(torch.arange(num_envs))

    def end_episodes(self, ended: torch.Tensor) -> None:
        ids = ended.nonzero().flatten()
        if len(ids):
            self.expert.reset(ids)

    def act(self, obs: dict[str, torch.Tensor], generator=None,
            deterministic: bool = True) -> torch.Tensor:
        return self.expert.act(obs["state"][:, -1])[:, None]


def expert_success(task: str, num_envs: int, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The success [num_envs] of each env's first episode under the task's expert (env seed
    `seed`, expert generator seed `seed + 1`)."""
    env = make_env(task, num_envs=num_envs)
    expert = make_expert(task, num_envs, noise=noise,
                         generator=torch.Generator().manual_seed(seed + 1))
    collector = Collector(env, ExpertPolicy(expert, env.obs_dim, env.action_dim))
    collector.reset(seed=seed)
    success = collector.first_episodes()["success"]
    env.close()
    return success
