"""Shared PPO math against hand-computed examples."""

import pytest
import torch

from embodied.algos.common import (
    approx_kl,
    clipped_surrogate,
    gae,
    group_advantages,
    value_loss,
)


def test_gae_matches_hand_computation_with_termination_and_truncation():
    # One env, 4 decisions: decision 1 is truncated (bootstrap from its final obs value 5.0),
    # decision 3 terminates (no bootstrap).
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    values = torch.tensor([[0.5], [1.0], [1.5], [2.0]])
    next_values = torch.tensor([[1.0], [5.0], [2.0], [0.0]])
    ends = torch.tensor([[False], [True], [False], [True]])
    adv, ret = gae(rewards, values, next_values, ends, gamma, lam)
    d3 = 4.0 - 2.0
    d2 = 3.0 + 0.9 * 2.0 - 1.5
    d1 = 2.0 + 0.9 * 5.0 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a3 = d3
    a2 = d2 + 0.45 * a3
    a1 = d1  # truncation: nothing flows back from the next episode
    a0 = d0 + 0.45 * a1
    torch.testing.assert_close(adv[:, 0], torch.tensor([a0, a1, a2, a3]))
    torch.testing.assert_close(ret, adv + values)


def test_clipped_surrogate_and_dual_clip():
    adv = torch.tensor([1.0, -1.0, -1.0])
    log_ratio = torch.log(torch.tensor([1.5, 1.5, 10.0]))
    loss = clipped_surrogate(log_ratio, adv, clip=0.2)
    expected = torch.tensor([-1.2, 1.5, 10.0]).mean()
    torch.testing.assert_close(loss, expected)
    dual = clipped_surrogate(log_ratio, adv, clip=0.2, dual_clip=3.0)
    torch.testing.assert_close(dual, torch.tensor([-1.2, 1.5, 3.0]).mean())


def test_value_loss_variants_and_kl():
    v, r, old = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(value_loss(v, r), torch.tensor((0.5 + 4.5) / 2))
    clipped = value_loss(v, r, old_values=old, clip=0.5)  # max(unclipped, clipped) per sample
    torch.testing.assert_close(clipped, torch.tensor((0.5 + 4.5) / 2))
    # A case where clipping matters: v moved 2 from old; clipped to 0.5 it misses r by 1.5.
    one = value_loss(torch.tensor([3.0]), torch.tensor([3.0]), torch.tensor([1.0]), clip=0.5)
    torch.testing.assert_close(one, torch.tensor(0.5 * 1.5**2))
    huber = value_loss(v, r, huber_delta=1.0)
    torch.testing.assert_close(huber, torch.tensor((0.5 + 2.5) / 2))
    assert approx_kl(torch.zeros(5)) == 0
    assert approx_kl(torch.tensor([0.1, -0.1])) > 0


def test_group_advantages_normalise_within_groups():
    r = torch.tensor([1.0, 3.0, 10.0, 10.0])
    a = group_advantages(r, torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(a[:2], torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)
    assert a[2:].abs().max() == pytest.approx(0.0)


def test_return_normalizer_scales_by_the_running_return_std():
    from embodied.algos.common import ReturnNormalizer

    norm = ReturnNormalizer(num_envs=2, gamma=0.5)
    done = torch.tensor([False, True])
    seen = []
    for r in ([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]):
        reward = torch.tensor(r, dtype=torch.float64)
        expected_returns = norm.returns * 0.5 + reward
        seen += expected_returns.tolist()
        out = norm(reward, done)
        var = torch.tensor(seen).var(unbiased=False).item()
        assert norm.var == pytest.approx(var)
        assert torch.allclose(out, reward / (var + 1e-8) ** 0.5)
        assert norm.returns[1] == 0.0  # a finished episode restarts its return
    copy = ReturnNormalizer(num_envs=2, gamma=0.5)
    copy.load_state_dict(norm.state_dict())
    assert (copy.count, copy.mean, copy.var) == (norm.count, norm.mean, norm.var)
