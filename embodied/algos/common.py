"""The math every PPO-family algorithm shares, written once and unit-tested.

Shapes: T decisions (policy calls) per env, N envs, B samples in a minibatch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, episode_end: Tensor,
        gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over decisions, [T, N] each -> (advantages, returns).

    next_values[t] is the value to bootstrap from after decision t: V(s_{t+1}) inside an
    episode, V(final observation) when the episode was truncated there, 0 when terminated.
    episode_end[t] (terminated or truncated) stops the recursion from the next episode.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        running = delta + gamma * lam * (~episode_end[t]).to(rewards.dtype) * running
        advantages[t] = running
    return advantages, advantages + values


def group_advantages(returns: Tensor, groups: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO: (R - mean of its group) / (std of its group + eps); groups [B] integer ids."""
    out = torch.zeros_like(returns)
    for g in groups.unique():
        mask = groups == g
        r = returns[mask]
        out[mask] = (r - r.mean()) / (r.std(unbiased=False) + eps)
    return out


def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, clip: float,
                      dual_clip: float | None = None) -> Tensor:
    """PPO's clipped objective as a loss (mean over the batch); optional dual clip (c > 1)."""
    ratio = log_ratio.exp()
    loss = -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    if dual_clip is not None:
        # Bound the loss of negative-advantage samples whose ratio exploded.
        loss = torch.where(advantages < 0, torch.min(loss, -dual_clip * advantages), loss)
    return loss.mean()


def value_loss(values: Tensor, returns: Tensor, old_values: Tensor | None = None,
               clip: float | None = None, huber_delta: float | None = None) -> Tensor:
    def error(v: Tensor) -> Tensor:
        if huber_delta is None:
            return 0.5 * (v - returns).square()
        return torch.nn.functional.huber_loss(v, returns, reduction="none", delta=huber_delta)

    loss = error(values)
    if clip is not None and old_values is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.max(loss, error(clipped))
    return loss.mean()


def approx_kl(log_ratio: Tensor) -> Tensor:
    """The low-variance estimator E[(r - 1) - log r] of KL(old || new)."""
    return ((log_ratio.exp() - 1) - log_ratio).mean()


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


class ReturnNormalizer:
    """Divides rewards by the running std of the discounted return (no mean shift), as
    SB3's VecNormalize and CleanRL's NormalizeReward do, so that value targets stay O(1)
    whatever the reward scale (Hopper's ~3 per step would otherwise swamp the critic)."""

    def __init__(self, num_envs: int, gamma: float, eps: float = 1e-8) -> None:
        self.gamma, self.eps = gamma, eps
        self.returns = torch.zeros(num_envs, dtype=torch.float64)
        self.count, self.mean, self.var = 0, 0.0, 1.0

    def __call__(self, reward: Tensor, done: Tensor) -> Tensor:
        self.returns = self.returns * self.gamma + reward.double()
        self._update(self.returns)
        self.returns[done] = 0.0
        return reward / math.sqrt(self.var + self.eps)

    def _update(self, x: Tensor) -> None:
        """Chan's parallel update of the running mean and variance with batch x."""
        n, mean, var = x.numel(), x.mean().item(), x.var(unbiased=False).item()
        total = self.count + n
        delta = mean - self.mean
        m2 = self.var * self.count + var * n + delta**2 * self.count * n / total
        self.count, self.mean, self.var = total, self.mean + delta * n / total, m2 / total

    def state_dict(self) -> dict:
        return {"returns": self.returns, "count": self.count, "mean": self.mean,
                "var": self.var}

    def load_state_dict(self, state: dict) -> None:
        self.returns, self.count = state["returns"], state["count"]
        self.mean, self.var = state["mean"], state["var"]
