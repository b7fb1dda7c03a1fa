"""The PPO core for chain policies: ratio exactly 1 on the first minibatch for every
sampler and K, gradients reach only the intended parameters, and a run trains end to end."""

import pytest
import torch

from embodied.algos.chain_ppo import ChainPPO, ChainPPOConfig, TrainingDiverged
from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy

SAMPLERS = [("flow", "learned_noise"), ("flow", "sde"), ("flow", "sde_hybrid"),
            ("diffusion", "ddim"), ("diffusion", "ddpm")]


def base_policy(kind, k):
    torch.manual_seed(0)
    extra = {"num_train_steps": k} if kind == "diffusion" else {}
    config = PolicyConfig(kind=kind, obs_dim=8, action_dim=2, horizon=4, n_action_steps=2,
                          num_steps=k, net_kwargs={"hidden": 32, "depth": 1}, **extra)
    return ChunkPolicy(config)


def make_algo(kind, sampler, k, tmp_path, **kw):
    sampler_kwargs = {"eta": 1.0} if sampler == "ddim" else {}
    config = ChainPPOConfig(sampler=sampler, sampler_kwargs=sampler_kwargs, num_envs=8,
                            decisions_per_iteration=4, minibatch_size=16, epochs=1,
                            eval_every=0, video=False, **{"float64": True, **kw})
    return ChainPPO(base_policy(kind, k), "reach", config, tmp_path)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize(("kind", "sampler"), SAMPLERS)
def test_ratio_is_one_on_first_minibatch(kind, sampler, k, tmp_path):
    algo = make_algo(kind, sampler, k, tmp_path)
    rollout, _ = algo.collect()
    states = rollout.states.flatten(0, 1)
    obs = rollout.obs.flatten(0, 1)
    sde = None if rollout.sde_step is None else rollout.sde_step.flatten(0, 1)
    from embodied.policies.samplers import Chain

    chain = Chain(states, rollout.log_probs.flatten(0, 1), sde)
    new = algo.policy.log_prob(obs, chain).sum(-1)
    old = chain.log_probs.sum(-1)
    assert torch.isfinite(old).all()
    assert (new - old).abs().max() < 1e-5  # the ratio exp(new - old) is 1 to 1e-5
    algo.update(rollout)  # also runs the built-in first-minibatch check


def test_first_minibatch_check_catches_a_changed_time_grid(tmp_path):
    algo = make_algo("flow", "sde", 4, tmp_path)
    rollout, _ = algo.collect()
    # Score with other settings than the rollout used (the public-code defect we guard).
    algo.policy.sampler = algo.policy.build_sampler("sde", 4, noise_level=0.7)
    with pytest.raises(TrainingDiverged, match="ratio is not 1"):
        algo.update(rollout)


def test_end_to_end_iteration_writes_run_dir(tmp_path):
    algo = make_algo("flow", "learned_noise", 2, tmp_path, iterations=2, eval_episodes=8)
    before = {k: v.clone() for k, v in algo.policy.state_dict().items()}
    summary = algo.train(progress=False)
    assert summary["iterations"] == 2 and summary["env_steps"] == 2 * 8 * 4 * 2
    changed = [k for k, v in algo.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("noise_head.") for k in changed)
    assert any(k.startswith("denoiser.") for k in changed)
    assert not any("normalizer" in k for k in changed)
    assert (tmp_path / "policy" / "model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "train_state.pt").exists()


def test_cli_finetune_smoke(tmp_path):
    import json
    import subprocess
    import sys

    base_policy("flow", 2).save_pretrained(tmp_path / "base")
    cmd = [sys.executable, "-m", "embodied.cli", "finetune", "task=reach", "algo=flow_sde",
           f"base={tmp_path / 'base'}", f"run_dir={tmp_path / 'run'}", "algo.iterations=2",
           "algo.num_envs=8", "algo.decisions_per_iteration=4", "algo.eval_every=1",
           "algo.eval_episodes=8", "algo.video=false", "algo.minibatch_size=16"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 2 and summary["episodes"] == 8
    assert 0.0 <= summary["success_before"] <= 1.0 and 0.0 <= summary["success_after"] <= 1.0
    assert (tmp_path / "run" / "curve.png").exists()
