"""Ensemble Q critics for the off-policy algorithms: E heads in one batched forward.

Every layer of the E heads is one [E, in, out] weight applied with `torch.baddbmm`, so a
forward over all heads costs one call per layer, not a Python loop over heads; each head has
its own LayerNorm (normalised per head, its own scale and shift) before the activation.

    critic = EnsembleQ(feature_dim, action_dim, num_heads=10)
    q = critic(features, actions)          # [E, B] (or [E, B, h] for a chunk critic)
    target = redq_target(target_critic(next_features, next_actions), 2, generator)  # [B]
    polyak_update(target_critic, critic, tau=0.005)

Chunk critics (`chunk=h`): Q(s, a_{t:t+j}) for every prefix length j = 1..h, one output
each. Prefix j's output sees only a_{t:t+j} (the later actions are zeroed and a one-hot of j
is appended), so a value of a short prefix never depends on actions after it; all h
prefixes go through the net as one batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EnsembleLinear(nn.Module):
    """E independent linear layers: [E, B, in] -> [E, B, out]; each head initialised as
    nn.Linear would initialise it."""

    def __init__(self, num_heads: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num_heads, in_dim, out_dim).uniform_(-bound,
                                                                                  bound))
        self.bias = nn.Parameter(torch.empty(num_heads, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with a scale and shift per head: [E, B, H]."""

    def __init__(self, num_heads: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class EnsembleQ(nn.Module):
    """E Q-networks over (features, action): Linear -> LayerNorm -> ReLU, `depth` times,
    then Linear to one value. chunk=h: actions [B, h, Da] and one value per prefix."""

    def __init__(self, feature_dim: int, action_dim: int, num_heads: int = 10,
                 hidden: int = 256, depth: int = 2, chunk: int | None = None) -> None:
        super().__init__()
        if num_heads < 1 or depth < 1 or hidden < 1:
            raise ValueError("num_heads, depth and hidden must be >= 1")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 (a prefix length), got {chunk}")
        self.num_heads, self.chunk, self.action_dim = num_heads, chunk, action_dim
        in_dim = feature_dim + action_dim * (chunk or 1) + (chunk or 0)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [EnsembleLinear(num_heads, in_dim if i == 0 else hidden, hidden),
                       EnsembleLayerNorm(num_heads, hidden), nn.ReLU()]
        layers.append(EnsembleLinear(num_heads, hidden, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor, actions: Tensor) -> Tensor:
        """[E, B] values, or [E, B, h] for a chunk critic (prefix lengths 1..h)."""
        if self.chunk is None:
            x = torch.cat([features, actions.flatten(1)], -1)
            return self._heads(x)
        b, h = actions.shape[0], self.chunk
        if actions.shape[1:] != (h, self.action_dim):
            raise ValueError(f"a chunk critic takes actions [B, {h}, {self.action_dim}], got "
                             f"{tuple(actions.shape)}")
        prefix = torch.tril(torch.ones(h, h, dtype=torch.bool, device=actions.device))
        # Row j keeps steps <= j; select, not multiply (0 * inf is nan), [B, h, h, Da].
        masked = torch.where(prefix[None, :, :, None], actions[:, None],
                             torch.zeros((), dtype=actions.dtype, device=actions.device))
        onehot = torch.eye(h, device=actions.device).expand(b, h, h)
        x = torch.cat([features[:, None].expand(b, h, features.shape[-1]),
                       masked.flatten(2), onehot], -1).reshape(b * h, -1)
        return self._heads(x).reshape(self.num_heads, b, h)

    def _heads(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(0).expand(self.num_heads, *x.shape)
        return self.net(x).squeeze(-1)


def redq_target(values: Tensor, subset: int = 2,
                generator: torch.Generator | None = None) -> Tensor:
    """Min over a random subset of `subset` heads (REDQ), drawn once per call: [E, ...] ->
    [...]. subset >= E takes the min over all heads (clipped double Q when E = 2)."""
    heads = values.shape[0]
    if subset >= heads:
        return values.min(0).values
    chosen = torch.randperm(heads, generator=generator)[:subset].to(values.device)
    return values[chosen].min(0).values


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, parameter by parameter."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)
