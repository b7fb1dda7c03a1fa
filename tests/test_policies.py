"""Policies: BC recovers both modes of a bimodal dataset; save/load gives identical actions;
chain log-probs are recomputed exactly; bad checkpoints get clear errors."""

import json

import pytest
import torch

from embodied.core.errors import ConfigError
from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy

KINDS = {
    "flow": {"kind": "flow", "net": "mlp", "num_steps": 4},
    "shortcut": {"kind": "shortcut", "net": "mlp", "num_steps": 2},
    "diffusion": {"kind": "diffusion", "net": "mlp", "num_train_steps": 20, "sampler": "ddpm"},
    "gaussian": {"kind": "gaussian"},
}


def make_policy(kind, obs_dim=3, action_dim=2, horizon=4, n_action_steps=2, **kw):
    torch.manual_seed(0)
    config = PolicyConfig(obs_dim=obs_dim, action_dim=action_dim, horizon=horizon,
                          n_action_steps=n_action_steps, **{**KINDS[kind], **kw})
    policy = ChunkPolicy(config)
    policy.fit_normalizers({
        "observation.state": {"mean": torch.zeros(obs_dim), "std": torch.ones(obs_dim)},
        "action": {"min": -torch.ones(action_dim), "max": torch.ones(action_dim)}})
    return policy


def bimodal_batch(batch, generator):
    """Same observation, two equally likely action chunks: all +0.6 or all -0.6."""
    obs = torch.zeros(batch, 3)
    sign = torch.where(torch.rand(batch, generator=generator) < 0.5, 1.0, -1.0)
    actions = 0.6 * sign[:, None, None] * torch.ones(batch, 4, 2)
    actions = actions + 0.03 * torch.randn(actions.shape, generator=generator)
    return obs, actions


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_bc_recovers_both_modes(kind):
    extra = {"num_steps": 10} if kind == "flow" else {}  # finer Euler steps split modes cleanly
    policy = make_policy(kind, net_kwargs={"hidden": 128, "depth": 2}, **extra)
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        obs, actions = bimodal_batch(128, g)
        loss = policy.bc_loss(obs, actions, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    chunk = policy.act(torch.zeros(1000, 3), generator=torch.Generator().manual_seed(1))
    mean_action = chunk.mean(dim=(1, 2))
    upper = (mean_action > 0.4).float().mean().item()
    lower = (mean_action < -0.4).float().mean().item()
    assert 0.3 < upper < 0.7 and 0.3 < lower < 0.7, (upper, lower)
    assert upper + lower > 0.9  # few samples between the modes (no mode averaging)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_save_load_gives_identical_actions(kind, tmp_path):
    policy = make_policy(kind).eval()
    obs = torch.randn(5, 3)
    before = policy.act(obs, generator=torch.Generator().manual_seed(7), deterministic=False)
    policy.save_pretrained(tmp_path / "p")
    loaded = ChunkPolicy.from_pretrained(tmp_path / "p")
    after = loaded.act(obs, generator=torch.Generator().manual_seed(7), deterministic=False)
    assert torch.equal(before, after)
    assert before.shape == (5, 2, 2) and before.abs().max() <= 1.0
    assert torch.equal(loaded.action_normalizer.scale, policy.action_normalizer.scale)
    # Saving again over the same directory swaps it whole.
    loaded.save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


@pytest.mark.parametrize("sampler", ["learned_noise", "sde", "sde_hybrid"])
@pytest.mark.parametrize("kind", ["flow", "shortcut"])
def test_chain_log_prob_is_recomputed_exactly(kind, sampler):
    policy = make_policy(kind, sampler=sampler, noise_head=sampler == "learned_noise").eval()
    obs = torch.randn(6, 3)
    chunk, chain = policy.sample(obs, generator=torch.Generator().manual_seed(0))
    recomputed = policy.log_prob(obs, chain)
    torch.testing.assert_close(recomputed, chain.log_probs, atol=1e-5, rtol=0)
    assert torch.isfinite(chain.total_log_prob()).all()


def test_diffusion_chain_log_prob_is_recomputed_exactly():
    policy = make_policy("diffusion", sampler="ddim", num_steps=5).eval()
    obs = torch.randn(6, 3)
    _, chain = policy.sample(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(policy.log_prob(obs, chain), chain.log_probs, atol=1e-5, rtol=0)


def test_observation_history_shape_is_checked():
    policy = make_policy("flow", n_obs_steps=2)
    policy.act(torch.randn(2, 2, 3))
    policy.act(torch.randn(2, 3))  # one frame: repeated as the history
    with pytest.raises(ValueError, match="To=2"):
        policy.act(torch.randn(2, 3, 3))


def test_bad_checkpoints_and_configs_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not a policy checkpoint"):
        ChunkPolicy.from_pretrained(tmp_path)
    make_policy("flow").save_pretrained(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    meta["policy"]["horizon"] = 6
    (tmp_path / "p" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="do not fit"):
        ChunkPolicy.from_pretrained(tmp_path / "p")
    with pytest.raises(ConfigError, match="kind"):
        PolicyConfig(kind="vae", obs_dim=3, action_dim=2)
    with pytest.raises(ConfigError, match="n_action_steps"):
        PolicyConfig(obs_dim=3, action_dim=2, horizon=2, n_action_steps=4)
    with pytest.raises(ConfigError, match="obs_dim"):
        PolicyConfig()


def test_shortcut_start_times_cover_every_slot_and_leave_room():
    from embodied.policies.policy import shortcut_start_times

    d = torch.full((4000,), 0.25)
    t = shortcut_start_times(d, torch.Generator().manual_seed(0))
    assert set(t.tolist()) == {0.0, 0.25, 0.5}  # every j in {0, 1, 2}, t + 2d <= 1
    assert shortcut_start_times(torch.full((50,), 0.5)).eq(0).all()
