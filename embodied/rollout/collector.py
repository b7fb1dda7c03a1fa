"""The collector: one engine that steps any VecEnv with any chunk policy (DESIGN seam 3).

It keeps, per env, the observation history the policy conditions on (To frames of every
observation key: state, camera images, ...), the queue of the chunk being executed (Ta
actions) and the policy's per-env state (`policy.reset(n)`, `policy.end_episodes(mask)`),
and restarts each on that env's own episode end. Every loop goes through it:

- `decision()`: one policy call for every env, then Ta env steps (on-policy learners; a
  decision's reward is the sum over its executed steps, and it records the end flags, the
  history ending in the final observation for bootstrapping, and optionally every step for
  replay buffers);
- `first_episodes()`: per-env replanning until every env finished its first episode
  (evaluation, recording).

Episode statistics stay in tensors (masked sums, no `.item()` / `.tolist()` per step), so a
GPU backend pays no host round trip inside the step loop.

Shapes: N envs, To history, Ta executed actions, Da action dims.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from embodied.policies.queue import ChunkQueue

Obs = dict[str, torch.Tensor]
Tensor = torch.Tensor


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """[N] mask broadcast over the trailing dims of `like` ([N, ...])."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


class ObsHistory:
    """Per-env histories [N, To, ...] of every observation key. A new episode's history is
    its first observation repeated (the policy saw the same at pretraining's episode start)."""

    def __init__(self, n_obs_steps: int) -> None:
        self.To = n_obs_steps
        self.frames: Obs = {}

    def start(self, obs: Obs, mask: Tensor | None = None) -> None:
        """Restart the histories of envs in `mask` (all envs if None) from `obs`."""
        for key, value in obs.items():
            repeated = value.unsqueeze(1).expand(-1, self.To, *value.shape[1:])
            if mask is None or key not in self.frames:
                self.frames[key] = repeated.clone()
            else:
                self.frames[key] = torch.where(_rows(mask, repeated), repeated, self.frames[key])

    def pushed(self, obs: Obs) -> Obs:
        """The histories with `obs` appended as the newest frame (not stored)."""
        return {k: torch.cat([v[:, 1:], obs[k].unsqueeze(1)], 1) for k, v in self.frames.items()}

    def push(self, obs: Obs) -> None:
        """Append the newest observation (an env that does not auto-reset: a robot)."""
        self.frames = self.pushed(obs)

    def after_step(self, obs: Obs, done: Tensor, final_obs: Obs | None) -> Obs | None:
        """Advance by one env step. Envs that finished get a fresh history from their next
        episode's first observation; returns the histories ending in their final
        observations (rows where `done`; None if no env finished)."""
        final = None
        if final_obs is not None:
            final = self.pushed(final_obs)
        self.frames = self.pushed(obs)
        if final_obs is not None:
            self.start(obs, done)
        return final

    def get(self, ids: Tensor | None = None) -> Obs:
        return dict(self.frames) if ids is None else {k: v[ids] for k, v in self.frames.items()}


@dataclass
class Step:
    """One env step of every env (what a per-step replay buffer stores)."""

    obs: Obs              # the histories the action was taken from ([N, To, ...])
    action: Tensor        # [N, Da]
    reward: Tensor        # [N]
    terminated: Tensor    # [N]
    truncated: Tensor     # [N]
    next_obs: Obs         # histories after the step; rows that ended: ending in the final obs


@dataclass
class Decision:
    """One policy call for every env and the Ta env steps that executed its chunk.

    If an env's episode ends inside the chunk the decision ends the episode (terminated, or
    truncated with `final_obs` to bootstrap from); the chunk's leftover actions still step
    the env's next episode (the batch steps together) but count for no decision.
    """

    obs: Obs                    # histories at the decision ([N, To, ...], images uint8)
    chunk: Tensor               # [N, Ta, Da] executed actions
    chain: Any                  # the policy's Chain (states, log-probs)
    reward: Tensor              # [N] summed over the executed steps of this episode
    terminated: Tensor          # [N]
    truncated: Tensor           # [N]
    final_obs: Obs              # [N, To, ...] histories ending in the final obs (ended rows)
    next_obs: Obs               # histories after the chunk (the next decision's obs)
    episode_return: Tensor      # [N] return of the episode that ended here (ended rows)
    episode_success: Tensor     # [N] bool, likewise
    steps: list[Step] = field(default_factory=list)


@dataclass
class EpisodeStats:
    """Sums over finished episodes, kept as tensors (read them once per iteration)."""

    count: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    return_sum: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    success_sum: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))

    def add(self, ended: Tensor, returns: Tensor, successes: Tensor) -> None:
        self.count = self.count + ended.sum()
        self.return_sum = self.return_sum + torch.where(ended, returns.double(), 0.0).sum()
        self.success_sum = self.success_sum + (ended & successes).sum()

    def summary(self) -> dict[str, float]:
        count = int(self.count)
        if not count:
            return {"episodes": 0}
        return {"episodes": count, "train_return": float(self.return_sum) / count,
                "train_success": int(self.success_sum) / count}


class Collector:
    """Steps `env` with `policy`; see the module docstring."""

    def __init__(self, env: Any, policy: Any, generator: torch.Generator | None = None,
                 reward_scale: float = 1.0) -> None:
        self.env, self.policy = env, policy
        self.generator = generator
        self.reward_scale = reward_scale
        self.num_envs = env.num_envs
        self.history = ObsHistory(policy.config.n_obs_steps)
        self.stats = EpisodeStats()
        self.seconds = {"policy": 0.0, "sim": 0.0}
        self.started = False

    def reset_counters(self) -> None:
        """Zero the episode statistics and the policy / simulator seconds."""
        self.stats = EpisodeStats()
        self.seconds = {"policy": 0.0, "sim": 0.0}

    # --- episodes -----------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Obs:
        """Fresh episodes in every env (and fresh per-env policy state)."""
        obs = self.env.reset(seed=seed)
        return self.restart(obs)

    def restart(self, obs: Obs) -> Obs:
        """Every env starts a new episode at `obs` (after the caller reset the env)."""
        self.history.start(obs)
        self.policy.reset(self.num_envs)
        self.started = True
        return obs

    def _step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Obs | None, dict]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        done = terminated | truncated
        final = self.history.after_step(obs, done, info.get("final_obs"))
        self.policy.end_episodes(done)
        return reward, terminated, truncated, final, info

    # --- on-policy decisions ------------------------------------------------------------
    def decision(self, deterministic: bool = False, keep_steps: bool = False) -> Decision:
        """One synchronous decision of every env (see Decision)."""
        if not self.started:
            self.reset()
        n, dtype = self.num_envs, self.policy.dtype
        obs = self.history.get()
        t0 = time.perf_counter()
        chunk, chain = self.policy.sample(obs, generator=self.generator,
                                          deterministic=deterministic)
        t1 = time.perf_counter()
        reward = torch.zeros(n, dtype=dtype)
        alive = torch.ones(n, dtype=torch.bool)
        terminated = torch.zeros(n, dtype=torch.bool)
        truncated = torch.zeros(n, dtype=torch.bool)
        final_obs = {k: torch.zeros_like(v) for k, v in obs.items()}
        episode_return = torch.zeros(n, dtype=torch.float64)
        episode_success = torch.zeros(n, dtype=torch.bool)
        steps: list[Step] = []
        for j in range(chunk.shape[1]):
            step_obs = self.history.get() if keep_steps else None
            r, term, trunc, final, info = self._step(chunk[:, j])
            reward += r.to(dtype) * alive * self.reward_scale
            ended = (term | trunc) & alive
            if final is not None:  # some env finished: keep what its episode ended with
                for key, value in final.items():
                    final_obs[key] = torch.where(_rows(ended, value), value, final_obs[key])
                episode_return = torch.where(ended, info["episode_return"].double(),
                                             episode_return)
                episode_success = torch.where(ended, info["episode_success"], episode_success)
                # Every episode that ended counts, also short ones inside leftover steps.
                self.stats.add(term | trunc, info["episode_return"], info["episode_success"])
            terminated |= term & alive
            truncated |= trunc & alive
            alive &= ~ended
            if keep_steps:
                next_obs = self.history.get()
                if final is not None:
                    done = term | trunc
                    next_obs = {k: torch.where(_rows(done, v), final[k], v)
                                for k, v in next_obs.items()}
                steps.append(Step(step_obs, chunk[:, j], r, term, trunc, next_obs))
        self.seconds["policy"] += t1 - t0
        self.seconds["sim"] += time.perf_counter() - t1
        return Decision(obs, chunk, chain, reward, terminated, truncated, final_obs,
                        self.history.get(), episode_return, episode_success, steps)

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def first_episodes(self, deterministic: bool = True, video_env: int | None = None,
                       on_step: Callable[[Step, dict], None] | None = None) -> dict[str, Any]:
        """Run until every env finished its first episode, each env replanning whenever its
        queue is empty; returns per-env success [N], return [N], length [N] and, with
        `video_env`, the frames of that env's first episode. `on_step(step, info)` sees
        every env step (recording: `Step.obs` holds the histories the action came from)."""
        if not self.started:
            self.reset()
        n = self.num_envs
        queue = ChunkQueue(n, self.policy.config.n_action_steps)
        finished = torch.zeros(n, dtype=torch.bool)
        success = torch.zeros(n, dtype=torch.bool)
        returns = torch.zeros(n, dtype=torch.float64)
        lengths = torch.zeros(n, dtype=torch.long)
        frames: list[np.ndarray] = []
        while not bool(finished.all()):
            plan = queue.needs_plan().nonzero().flatten()
            if len(plan):
                queue.load(plan, self.policy.act(self.history.get(plan),
                                                 generator=self.generator,
                                                 deterministic=deterministic))
            if video_env is not None and not finished[video_env]:
                frames.append(self.env.render([video_env])[0])
            obs, actions = self.history.get(), queue.pop()
            reward, term, trunc, final, info = self._step(actions)
            done = term | trunc
            if on_step is not None:
                next_obs = self.history.get() if final is None else {
                    k: torch.where(_rows(done, v), final[k], v)
                    for k, v in self.history.get().items()}
                on_step(Step(obs, actions, reward, term, trunc, next_obs), info)
            if final is not None:
                first = done & ~finished
                success = torch.where(first, info["episode_success"], success)
                returns = torch.where(first, info["episode_return"].double(), returns)
                lengths = torch.where(first, info["episode_length"], lengths)
                finished |= done
                queue.clear(done)
        return {"success": success, "return": returns, "length": lengths, "frames": frames}
