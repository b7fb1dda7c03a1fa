"""Ensemble critics: the batched forward equals E separate nets, chunk critics' prefix
values ignore later actions, REDQ's target, Polyak averaging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embodied.algos.critics import (
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleQ,
    polyak_update,
    redq_target,
)


def separate_head(critic: EnsembleQ, head: int, x: torch.Tensor) -> torch.Tensor:
    """Head `head` as an ordinary network of nn.Linear / nn.LayerNorm / ReLU."""
    layers = []
    for module in critic.net:
        if isinstance(module, EnsembleLinear):
            lin = nn.Linear(module.weight.shape[1], module.weight.shape[2])
            lin.weight.data = module.weight[head].T.clone()
            lin.bias.data = module.bias[head, 0].clone()
            layers.append(lin)
        elif isinstance(module, EnsembleLayerNorm):
            norm = nn.LayerNorm(module.weight.shape[-1])
            norm.weight.data = module.weight[head, 0].clone()
            norm.bias.data = module.bias[head, 0].clone()
            layers.append(norm)
        else:
            layers.append(module)
    return nn.Sequential(*layers)(x).squeeze(-1)


def test_the_ensemble_forward_equals_separate_nets():
    torch.manual_seed(0)
    critic = EnsembleQ(feature_dim=6, action_dim=3, num_heads=5, hidden=32, depth=2)
    for p in critic.parameters():  # make the LayerNorm affine non-trivial too
        p.data.add_(0.1 * torch.randn_like(p))
    feats, actions = torch.randn(7, 6), torch.randn(7, 3)
    q = critic(feats, actions)
    assert q.shape == (5, 7)
    x = torch.cat([feats, actions], -1)
    for head in range(5):
        torch.testing.assert_close(q[head], separate_head(critic, head, x))
    assert sum(isinstance(m, EnsembleLinear) for m in critic.net) == 3  # no per-head loop


def test_heads_are_independent_and_gradients_reach_each():
    torch.manual_seed(1)
    critic = EnsembleQ(4, 2, num_heads=3, hidden=16)
    q = critic(torch.randn(5, 4), torch.randn(5, 2))
    assert not torch.allclose(q[0], q[1])  # different initialisations
    q[1].sum().backward()
    first = critic.net[0].weight.grad
    assert first[1].abs().sum() > 0 and first[0].abs().sum() == 0 and first[2].abs().sum() == 0


def test_a_chunk_critics_prefix_value_ignores_later_actions():
    torch.manual_seed(2)
    critic = EnsembleQ(4, 2, num_heads=2, hidden=16, chunk=3)
    feats, chunk = torch.randn(6, 4), torch.randn(6, 3, 2)
    q = critic(feats, chunk)
    assert q.shape == (2, 6, 3)
    changed = chunk.clone()
    changed[:, 2] += 5.0  # only the third action
    q2 = critic(feats, changed)
    torch.testing.assert_close(q2[..., :2], q[..., :2])  # prefixes 1 and 2 unchanged
    assert not torch.allclose(q2[..., 2], q[..., 2])
    with pytest.raises(ValueError, match=r"actions \[B, 3, 2\]"):
        critic(feats, torch.randn(6, 2, 2))


def test_redq_target_is_the_min_over_a_random_pair():
    values = torch.tensor([[1.0, 5.0], [3.0, 2.0], [0.5, 9.0], [4.0, 4.0]])  # [E=4, B=2]
    g = torch.Generator().manual_seed(0)
    chosen = torch.randperm(4, generator=torch.Generator().manual_seed(0))[:2]
    expected = values[chosen].min(0).values
    torch.testing.assert_close(redq_target(values, 2, g), expected)
    torch.testing.assert_close(redq_target(values, 4), values.min(0).values)
    picks = {tuple(sorted(torch.randperm(4, generator=g)[:2].tolist())) for _ in range(50)}
    assert len(picks) > 3  # the subset is drawn anew, not fixed


def test_polyak_update_moves_the_target_by_tau():
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = target.weight.detach().clone()
    polyak_update(target, source, 0.1)
    torch.testing.assert_close(target.weight, 0.9 * before + 0.1 * source.weight)
    with pytest.raises(ValueError, match="tau"):
        polyak_update(target, source, 0.0)


def test_a_non_finite_later_action_leaves_shorter_prefixes_finite():
    torch.manual_seed(3)
    critic = EnsembleQ(4, 2, num_heads=2, hidden=8, chunk=3)
    chunk = torch.randn(2, 3, 2)
    before = critic(torch.zeros(2, 4), chunk)
    chunk[:, 2] = float("nan")
    after = critic(torch.zeros(2, 4), chunk)
    torch.testing.assert_close(after[..., :2], before[..., :2])
