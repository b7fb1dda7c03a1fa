"""DSRL: the chunk is the frozen base's deterministic chunk from the chosen noise, the base
never changes, bad bases are refused, and the policy saves and loads whole."""

from __future__ import annotations

import pytest
import torch

from embodied.algos import make_finetune
from embodied.core.errors import ConfigError
from embodied.core.paths import ASSETS_DIR
from embodied.policies.config import PolicyConfig
from embodied.policies.noise_space import NoisePolicy
from embodied.policies.policy import ChunkPolicy
from embodied.policies.residual import load_policy

BASE = ASSETS_DIR / "base" / "pick_place_flow"


def test_the_chunk_is_the_bases_deterministic_chunk_from_the_chosen_noise():
    base = ChunkPolicy.from_pretrained(BASE)
    policy = NoisePolicy(base, bound=1.5, hidden=32)
    obs = {"state": torch.randn(5, base.config.obs_dim)}
    chunk, chain = policy.sample(obs, generator=torch.Generator().manual_seed(0))
    a = chain.states[:, 1]
    assert a.shape == (5, base.config.horizon * base.config.action_dim) and a.abs().max() < 1
    x0 = (1.5 * a).view(5, base.config.horizon, base.config.action_dim)
    torch.testing.assert_close(chunk, base.sample(obs, deterministic=True, x0=x0)[0])
    other = policy.chunk_from(obs, -a)
    assert not torch.allclose(other, chunk)  # the noise steers the chunk


def test_dsrl_trains_the_actor_and_leaves_the_base_bit_identical(tmp_path):
    base = ChunkPolicy.from_pretrained(BASE)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    settings = {"num_envs": 4, "iterations": 2, "eval_every": 0, "eval_episodes": 4,
                "video": False, "steps_per_iteration": 6, "warmup_steps": 3,
                "batch_size": 16, "hidden": 32, "checkpoint_every": 2}
    algo = make_finetune("dsrl", base, "pick_place", settings, tmp_path)
    actor_before = [p.detach().clone() for p in algo.policy.actor.parameters()]
    algo.train(progress=False)
    assert algo.updates > 0
    for k, v in algo.policy.base.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(p, q) for p, q in zip(algo.policy.actor.parameters(),
                                                      actor_before, strict=True))
    loaded = load_policy(tmp_path / "policy")
    assert isinstance(loaded, NoisePolicy)
    obs = {"state": torch.randn(3, base.config.obs_dim)}
    torch.testing.assert_close(loaded.act(obs), algo.policy.act(obs))


def test_a_base_without_a_denoising_chain_or_no_base_is_refused(tmp_path):
    gaussian = ChunkPolicy(PolicyConfig(kind="gaussian", obs_dim=26, action_dim=4,
                                        horizon=1, n_action_steps=1))
    with pytest.raises(ConfigError, match="flow, shortcut or diffusion base"):
        NoisePolicy(gaussian)
    with pytest.raises(ConfigError, match="give base="):
        make_finetune("dsrl", None, "pick_place", {"num_envs": 2}, tmp_path)


def test_dsrl_counts_env_steps_and_targets_the_noises_entropy(tmp_path):
    base = ChunkPolicy.from_pretrained(BASE)
    ta, noise_dim = base.config.n_action_steps, base.config.horizon * base.config.action_dim
    settings = {"num_envs": 2, "iterations": 1, "eval_every": 0, "eval_episodes": 2,
                "video": False, "steps_per_iteration": 2 * ta, "warmup_steps": ta,
                "utd": 1.0, "batch_size": 4, "checkpoint_every": 1}  # default hidden
    algo = make_finetune("dsrl", base, "pick_place", settings, tmp_path)
    assert algo.target_entropy == -float(noise_dim)
    algo.restart(0)
    algo.iterate(0)
    assert algo.vector_steps == 2 * ta and algo.env_steps == 2 * 2 * ta
    assert algo.updates == ta  # utd per vector env step: Ta updates for the second chunk
