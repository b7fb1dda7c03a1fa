"""The PPO core for chain policies: ratio exactly 1 on the first minibatch for every
sampler and K, gradients reach only the intended parameters, and a run trains end to end."""

import pytest
import torch

from embodied.algos import make_finetune
from embodied.algos.chain_ppo import TrainingDiverged
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


SMALL = {"num_envs": 8, "decisions_per_iteration": 4, "minibatch_size": 16, "epochs": 1,
         "eval_every": 0, "video": False, "float64": True}


def flat_obs(rollout):
    """The rollout's observation histories as one batch [T*N, To, ...]."""
    return {k: v.flatten(0, 1) for k, v in rollout.obs.items()}


def first_obs(rollout):
    return {k: v[0] for k, v in rollout.obs.items()}


def make_algo(kind, sampler, k, tmp_path, algorithm="reinflow", **kw):
    # The std floor keeps every diffusion step stochastic (the last DDIM/DDPM step's own std
    # is 0, and with K = 1 it is the only step): the ratio check then compares real densities.
    sampler_kwargs = {"ddim": {"eta": 1.0, "std_min": 0.01}, "ddpm": {"std_min": 0.01}}.get(
        sampler, {})
    chain = algorithm not in ("resip", "gaussian_ppo")  # these configs have no sampler
    settings = {**({"sampler": sampler, "sampler_kwargs": sampler_kwargs} if chain else {}),
                **SMALL, **kw}
    return make_finetune(algorithm, base_policy(kind, k), "reach", settings, tmp_path)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize(("kind", "sampler"), SAMPLERS)
def test_ratio_is_one_on_first_minibatch(kind, sampler, k, tmp_path):
    algo = make_algo(kind, sampler, k, tmp_path)
    rollout, _ = algo.collect()
    states = rollout.states.flatten(0, 1)
    obs = flat_obs(rollout)
    sde = None if rollout.sde_step is None else rollout.sde_step.flatten(0, 1)
    from embodied.policies.samplers import Chain

    chain = Chain(states, rollout.log_probs.flatten(0, 1), sde)
    new = algo.policy.log_prob(obs, chain).sum(-1)
    old = chain.log_probs.sum(-1)
    assert torch.isfinite(old).all()
    assert (old != 0).all()  # every chain has a density: the check below is not 0 == 0
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
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "resume=true" in again.stderr  # no silent overwrite


def _first_log_ratio(algo):
    from embodied.policies.samplers import Chain

    rollout, _ = algo.collect()
    sde = None if rollout.sde_step is None else rollout.sde_step.flatten(0, 1)
    chain = Chain(rollout.states.flatten(0, 1), rollout.log_probs.flatten(0, 1), sde)
    new = algo.policy.log_prob(flat_obs(rollout), chain, algo.first_trained)
    return rollout, new - chain.log_probs[:, algo.first_trained:]


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("algorithm", ["dppo", "dppo_one_step", "resip", "flow_noise"])
def test_ratio_is_one_for_every_algorithm(algorithm, k, tmp_path):
    if algorithm.startswith("dppo"):
        k_ft = 1 if algorithm == "dppo_one_step" else min(2, k)
        algo = make_algo("diffusion", "ddim", k, tmp_path, "dppo", finetune_steps=k_ft,
                         sampler_kwargs={"eta": 1.0, "std_min": 0.1, "log_prob_std_min": 0.1})
        assert algo.first_trained == k - k_ft
    elif algorithm == "resip":
        algo = make_algo("flow", "ode", k, tmp_path, "resip")
    else:
        algo = make_algo("flow", "learned_noise", k, tmp_path, algorithm)
    rollout, log_ratio = _first_log_ratio(algo)
    assert torch.isfinite(log_ratio).all() and log_ratio.abs().max() < 1e-5
    metrics = algo.update(rollout)  # runs the built-in check too
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_gaussian_ppo_ratio_and_learning_signal(tmp_path):
    algo = make_algo("flow", "gaussian", 1, tmp_path, "gaussian_ppo")
    rollout, log_ratio = _first_log_ratio(algo)
    assert log_ratio.abs().max() < 1e-5
    before = [p.clone() for p in algo.policy.parameters()]
    algo.update(rollout)
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.policy.parameters(), strict=True))


DPPO_SAMPLERS = [("diffusion", "ddim", {"eta": 1.0, "std_min": 0.1, "log_prob_std_min": 0.1}),
                 ("diffusion", "ddpm", {"std_min": 0.1}), ("flow", "sde", {}),
                 ("flow", "learned_noise", {})]


@pytest.mark.parametrize(("kind", "sampler", "sampler_kwargs"), DPPO_SAMPLERS)
def test_dppo_trains_only_the_last_steps(kind, sampler, sampler_kwargs, tmp_path):
    """K = 4, K' = 2, every sampler: the frozen prefix (noise included) never changes, and
    the first two transitions of a seeded chain are identical before and after an update;
    the last two move."""
    algo = make_algo(kind, sampler, 4, tmp_path, "dppo", finetune_steps=2, epochs=2,
                     actor_lr=1e-3, sampler_kwargs=sampler_kwargs)
    policy = algo.policy
    frozen = {k: v.clone() for k, v in policy.state_dict().items() if k.startswith("frozen.")}
    assert frozen and all(not p.requires_grad for p in policy.frozen.parameters())
    if sampler == "learned_noise":
        assert any(k.startswith("frozen.noise_head.") for k in frozen)
    obs = torch.randn(16, 8, dtype=torch.float64)

    def chain():
        return policy.sample(obs, generator=torch.Generator().manual_seed(3))[1].states

    before = chain()
    rollout, _ = algo.collect()
    algo.update(rollout)
    if sampler == "learned_noise":  # the trainable noise head moved; the frozen one did not
        assert not torch.equal(policy.noise_head.state_dict()["net.0.weight"]
                               if "net.0.weight" in policy.noise_head.state_dict()
                               else next(iter(policy.noise_head.parameters())),
                               frozen[next(k for k in frozen if "noise_head" in k)])
    after = chain()
    for k, v in policy.state_dict().items():
        if k.startswith("frozen."):
            assert torch.equal(v, frozen[k]), k
    assert torch.equal(before[:, :3], after[:, :3])  # x_0 and the two frozen steps
    assert not torch.allclose(before[:, 3:], after[:, 3:])


def test_resip_leaves_the_base_untouched_and_starts_as_the_base(tmp_path):
    algo = make_algo("flow", "ode", 2, tmp_path, "resip", epochs=2, actor_lr=1e-3)
    policy = algo.policy
    base_state = {k: v.clone() for k, v in policy.base.state_dict().items()}
    obs = torch.randn(8, 8, dtype=torch.float64)
    policy.reset(8)
    action = policy.act(obs, generator=torch.Generator().manual_seed(0))
    policy.reset(8)
    base = policy.base.act(obs, generator=torch.Generator().manual_seed(0))[:, :1]
    assert torch.allclose(action, base)  # zero-initialised residual: a = a_base
    rollout, _ = algo.collect()
    algo.update(rollout)
    for k, v in policy.base.state_dict().items():
        assert torch.equal(v, base_state[k]), k
    assert policy.residual.mean.weight.abs().sum() > 0  # the residual did learn


def test_resip_base_queue_restarts_per_env():
    from embodied.policies.residual import ResidualPolicy

    policy = ResidualPolicy(base_policy("flow", 2))  # base Ta = 2
    obs = torch.randn(3, 8)
    policy.reset(3)
    policy.act(obs)
    assert policy._queue.cursor.tolist() == [1, 1, 1]
    policy.end_episodes(torch.tensor([False, True, False]))
    assert policy._queue.cursor.tolist() == [1, 2, 1]  # env 1 replans, the others play on
    first_queue = policy._queue.queue.clone()
    policy.act(obs)
    assert torch.equal(policy._queue.queue[[0, 2]], first_queue[[0, 2]])
    assert not torch.equal(policy._queue.queue[1], first_queue[1])
    assert policy._queue.cursor.tolist() == [2, 1, 2]


def test_clip_schedule_has_no_zero_over_zero():
    from embodied.algos.dppo import DPPOConfig

    config = DPPOConfig(clip=0.01, clip_first=0.001)
    assert config.clip_schedule(1).tolist() == [0.01]
    clips = config.clip_schedule(4)
    assert clips[0].item() == pytest.approx(0.001) and clips[-1].item() == pytest.approx(0.01)
    assert (clips.diff() > 0).all()


def test_resume_is_exact(tmp_path):
    settings = {"iterations": 2, "checkpoint_every": 1, "eval_episodes": 4}
    whole = make_algo("flow", "learned_noise", 2, tmp_path / "whole", **settings)
    whole.train(progress=False)
    first = make_algo("flow", "learned_noise", 2, tmp_path / "cut", **{**settings,
                                                                         "iterations": 1})
    first.train(progress=False)  # as if killed after the checkpoint of iteration 1
    resumed = make_algo("flow", "learned_noise", 2, tmp_path / "cut", **settings)
    assert resumed.resume() and resumed.iteration == 1
    resumed.train(progress=False)
    for (key, a), b in zip(whole.policy.state_dict().items(),
                           resumed.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert torch.equal(whole.critic.head.weight, resumed.critic.head.weight)


def test_algo_configs_list_every_field():
    """configs/algo/*.yaml are generated from the dataclasses (scripts/make_algo_configs.py)."""
    from dataclasses import fields

    import yaml

    from embodied.algos import finetune_algorithm
    from embodied.core.paths import CONFIGS_DIR

    files = sorted((CONFIGS_DIR / "algo").glob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        data = yaml.safe_load(path.read_text())
        _, config_cls = finetune_algorithm(data.pop("algorithm"))
        assert set(data) == {f.name for f in fields(config_cls)}, path.name
        config_cls(**data)  # and the values are valid


def test_lr_schedules_decay_to_the_final_fraction():
    from embodied.algos.chain_ppo import ChainPPOConfig

    config = ChainPPOConfig(iterations=11, lr_final_fraction=0.1)
    assert config.lr_factor("constant", 10) == 1.0
    assert config.lr_factor("linear", 0) == 1.0
    assert config.lr_factor("linear", 5) == pytest.approx(0.55)
    assert config.lr_factor("cosine", 10) == pytest.approx(0.1)
    with pytest.raises(Exception, match="constant, linear or cosine"):
        ChainPPOConfig(actor_lr_schedule="step")


def test_grpo_groups_share_initial_states_and_whole_episodes(tmp_path):
    algo = make_algo("flow", "learned_noise", 2, tmp_path, advantage="grpo", group_size=4)
    rollout, stats = algo.collect()
    first = rollout.obs["state"][0]  # the first history of each env's episode
    assert torch.equal(first[0], first[3]) and torch.equal(first[4], first[7])
    assert not torch.equal(first[0], first[4])
    assert stats["episodes"] == 8  # one whole episode per env
    valid = rollout.valid.long()
    assert valid[0].all() and (valid.diff(dim=0) <= 0).all()  # valid until the episode ends
    adv, _ = algo.ppo.advantages(rollout)
    per_env = adv[0]
    for g in range(2):
        assert per_env[4 * g:4 * g + 4].sum().abs() < 1e-6  # zero mean within each group
    assert torch.equal(adv[5], per_env)  # every decision of an episode shares its advantage
    algo.update(rollout)  # ratio check on the valid decisions


@pytest.mark.parametrize("algorithm", ["reinflow", "dppo"])
def test_bc_regulariser_runs_in_float64_and_through_frozen_steps(algorithm, tmp_path):
    kind, sampler = ("diffusion", "ddim") if algorithm == "dppo" else ("flow", "learned_noise")
    extra = {"finetune_steps": 2, "sampler_kwargs": {"eta": 1.0, "std_min": 0.1}} \
        if algorithm == "dppo" else {}
    algo = make_algo(kind, sampler, 4, tmp_path, algorithm, bc_coef=1.0, **extra)
    rollout, _ = algo.collect()
    from embodied.policies.samplers import Chain

    chain = Chain(rollout.states[0], rollout.log_probs[0])
    assert algo._bc_loss(first_obs(rollout), chain).item() == pytest.approx(0.0, abs=1e-12)
    algo.update(rollout)
    assert algo._bc_loss(first_obs(rollout), chain).item() > 0  # moved away from the base


def test_finetune_steps_outside_dppo_is_an_error_not_ignored(tmp_path):
    from embodied.core.errors import ConfigError

    with pytest.raises(ConfigError, match="algo=dppo"):
        make_algo("flow", "learned_noise", 4, tmp_path, "reinflow", finetune_steps=2)


@pytest.mark.parametrize("settings, message", [
    ({"actor_lr": "3e-5"}, "actor_lr must be float or int, got '3e-5' .*with a dot"),
    ({"epochs": 2.5}, "epochs must be int, got 2.5"),
    ({"video": 1}, "video must be bool"),
    ({"epochs": True}, "epochs must be int, got True"),
])
def test_a_setting_of_the_wrong_type_is_a_config_error_naming_it(settings, message, tmp_path):
    from embodied.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_finetune("flow_sde", None, "reach", settings, tmp_path)
