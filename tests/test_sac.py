"""SAC from scratch: the squashed-Gaussian log-likelihood, config errors, the tripwires,
exact resume (replay included), and a seeded run that learns an easy task."""

from __future__ import annotations

import math

import pytest
import torch

from embodied.algos import make_finetune
from embodied.algos.offpolicy import TrainingError
from embodied.core.errors import ConfigError
from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy

TINY = {"num_envs": 4, "eval_every": 0, "eval_episodes": 4, "video": False,
        "steps_per_iteration": 10, "warmup_steps": 10, "batch_size": 32, "hidden": 32,
        "checkpoint_every": 2}


def test_squashed_log_prob_is_the_tanh_transformed_density():
    torch.manual_seed(0)
    policy = ChunkPolicy(PolicyConfig(kind="gaussian", squash=True, obs_dim=5, action_dim=3,
                                      horizon=1, n_action_steps=1,
                                      net_kwargs={"state_dependent_std": True}))
    obs = torch.randn(64, 5)
    a, logp = policy.rsample_squashed(obs, generator=torch.Generator().manual_seed(1))
    mean, log_std = policy.gaussian(policy.encode(obs))
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()),
        [torch.distributions.TanhTransform(cache_size=1)])
    u = torch.atanh(a.clamp(-1 + 1e-6, 1 - 1e-6))
    reference = dist.log_prob(torch.tanh(u)).sum(-1)
    torch.testing.assert_close(logp, reference, rtol=1e-3, atol=1e-3)
    assert a.abs().max() < 1
    act = policy.act(obs[:2], deterministic=True)  # evaluation: tanh of the mean
    torch.testing.assert_close(act[:, 0], torch.tanh(mean[:2]))
    with pytest.raises(ConfigError, match="squash is for gaussian"):
        PolicyConfig(kind="flow", squash=True, obs_dim=5, action_dim=3)


@pytest.mark.parametrize("settings, message", [
    ({"utd": 0}, "utd must be > 0"),
    ({"critic_subset": 3, "num_critics": 2}, "critic_subset=3 > num_critics=2"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
])
def test_bad_settings_are_clear_errors(settings, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        make_finetune("sac", None, "reach", {**TINY, **settings}, tmp_path)


def test_a_nan_reward_trips_with_a_clear_error(tmp_path):
    algo = make_finetune("sac", None, "reach", {**TINY, "iterations": 2}, tmp_path)
    algo.restart(0)
    algo.iterate(0)  # warm-up fills the replay
    algo.replay.reward[:] = math.nan
    with pytest.raises(TrainingError, match="critic loss is nan"):
        algo.update()


@pytest.mark.parametrize("algorithm", ["sac", "td3"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, algorithm):
    settings = {**TINY, "iterations": 4}
    whole = make_finetune(algorithm, None, "reach", settings, tmp_path / "whole")
    whole.train(progress=False)
    first = make_finetune(algorithm, None, "reach", {**settings, "iterations": 2},
                          tmp_path / "split")
    first.train(progress=False)
    second = make_finetune(algorithm, None, "reach", settings, tmp_path / "split")
    assert second.resume() and second.replay.count == first.replay.count > 0
    second.train(progress=False)
    for (name, a), b in zip(whole.policy.state_dict().items(),
                            second.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for a, b in zip(whole.critic.state_dict().values(), second.critic.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert whole.replay.count == second.replay.count
    torch.testing.assert_close(whole.replay.reward, second.replay.reward, rtol=0, atol=0)
    assert whole.updates == second.updates > 0


def test_a_seeded_sac_run_learns_reach(tmp_path):
    # Dense reward, 8 envs, 8,000 env steps: 0.00 -> 0.56 success here (eval 32 episodes).
    settings = {"num_envs": 8, "iterations": 40, "eval_every": 40, "eval_episodes": 32,
                "video": False, "steps_per_iteration": 25, "warmup_steps": 25, "utd": 2.0,
                "batch_size": 128, "hidden": 64, "checkpoint_every": 40}
    algo = make_finetune("sac", None, "reach", settings, tmp_path,
                         task_options={"reward_type": "dense"})
    summary = algo.train(progress=False)
    assert summary["success_after"] >= summary["success_before"] + 0.25, summary


def test_no_warmup_and_a_fresh_critic_on_sparse_rewards_do_not_trip(tmp_path):
    # pick_place's reward is sparse: no success yet, so max|r| = 0; the tripwire must not
    # mistake a fresh critic's outputs (or the entropy backup) for divergence.
    algo = make_finetune("sac", None, "pick_place", {**TINY, "iterations": 1, "warmup_steps": 0,
                                                     "hidden": 256, "utd": 2.0}, tmp_path)
    algo.train(progress=False)
    assert algo.updates > 0


def test_resuming_a_final_checkpoint_off_the_boundary_cuts_and_reseeds(tmp_path):
    import shutil

    first = make_finetune("sac", None, "reach", {**TINY, "iterations": 3}, tmp_path / "a")
    first.train(progress=False)  # the final checkpoint at iteration 3 (boundary: 2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    runs = []
    for name in ("a", "b"):
        algo = make_finetune("sac", None, "reach", {**TINY, "iterations": 4}, tmp_path / name)
        assert algo.resume()
        count = algo.replay.count
        algo.train(progress=False)
        runs.append(algo)
        row = (count - 1) % algo.replay.T
        assert bool(algo.replay.cut[row].all())  # the resumed episodes' last steps
    torch.testing.assert_close(runs[0].replay.frames["state"], runs[1].replay.frames["state"],
                               rtol=0, atol=0)  # seeded: two resumes agree


def test_td3_explores_around_its_deterministic_action_and_delays_its_actor(tmp_path):
    algo = make_finetune("td3", None, "reach", {**TINY, "iterations": 1, "explore_std": 0.05,
                                                "actor_every": 2, "utd": 2.0}, tmp_path)
    obs = {"state": torch.randn(4000, algo.policy.config.obs_dim) * 0.1}
    with torch.no_grad():
        mean = algo.policy.squashed_mean(obs)
        chunk = algo.explore.sample(obs)[0][:, 0]
    inside = (mean.abs() < 0.8).all(1)  # away from the clip at +-1
    noise = (chunk - mean)[inside]
    assert abs(float(noise.std()) - 0.05) < 0.005 and abs(float(noise.mean())) < 0.005
    algo.restart(0)
    algo.iterate(0)  # warm-up
    metrics = algo.iterate(1)
    steps = [s["step"] for s in algo.actor_opt.state.values()]
    assert algo.updates > 0 and all(int(n) == algo.updates // 2 for n in steps)
    assert "alpha" not in metrics and "actor_loss" in metrics  # no temperature
    # The target actor trails the actor (Polyak at each actor step), never equal to it.
    assert any(not torch.equal(p, q) for p, q in zip(
        algo.policy.parameters(), algo.target_policy.parameters(), strict=True))
