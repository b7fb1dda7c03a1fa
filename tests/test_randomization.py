"""The sim side of sim-to-real: per-env model randomisation on reset, observation noise,
action latency, the `none` config, and the finetune wiring."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from embodied.core.errors import ConfigError
from embodied.core.paths import CONFIGS_DIR
from embodied.envs import make_env
from embodied.sim2real.randomization import SCALED, DomainRandomizer

ENVS_DIR = Path(__file__).resolve().parents[1] / "embodied" / "envs"


def reach(num_envs, **kwargs):
    """`reach` whose episodes end only at truncation (no reset on reaching the goal)."""
    return make_env("reach", num_envs=num_envs, terminate_on_success=False, **kwargs)


def config(name):
    return yaml.safe_load((CONFIGS_DIR / "randomization" / f"{name}.yaml").read_text())


def masses(env):
    return torch.stack([torch.as_tensor(env.sim.get_model(i).body_mass)
                        for i in range(env.num_envs)])


def ctrl_of(env, actions):
    return env.task.action_to_ctrl(env.sim, torch.as_tensor(actions, dtype=torch.float64))


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def rollout(env, steps, seed=0, action_seed=1):
    """Observations, rewards and end flags of `steps` seeded random steps."""
    g = torch.Generator().manual_seed(action_seed)
    out = [env.reset(seed=seed)["state"]]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(
            torch.rand((env.num_envs, env.action_dim), generator=g) * 2 - 1)
        out += [obs["state"], reward[:, None], terminated[:, None], truncated[:, None]]
    return out


def test_masses_differ_per_seed_and_env_and_repeat_for_a_seed():
    def env_masses(seed):
        env = make_env("hopper", num_envs=3,
                       randomizer=DomainRandomizer(scale={"mass": [0.8, 1.2]}))
        env.reset(seed=seed)
        return masses(env), torch.as_tensor(env.model.body_mass)

    a, nominal = env_masses(0)
    b, _ = env_masses(0)
    c, _ = env_masses(1)
    assert torch.equal(a, b)                      # same seed, same draws
    assert not torch.equal(a[0], c[0])            # another seed, other masses
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])  # per env
    moving = nominal > 0
    ratio = a[:, moving] / nominal[moving]
    assert ((ratio >= 0.8) & (ratio <= 1.2)).all() and (ratio != 1).all()


@pytest.mark.parametrize("task", ["reach", "hopper", "push_cube"])
def test_repeated_resets_redraw_from_nominal_values(task):
    """Fixed factors: after several full and partial resets every field is exactly
    nominal x factor (compounding would give factor^resets)."""
    factors = {"mass": 1.5, "friction": 0.6, "damping": 1.4, "actuator_gain": 0.7,
               "timestep": 1.1}
    env = make_env(task, num_envs=2, randomizer=DomainRandomizer(
        scale={k: [v, v] for k, v in factors.items()}))
    for _ in range(3):
        env.reset(seed=0)
    env.reset(env_ids=torch.tensor([1]))
    env.reset(env_ids=torch.tensor([1]))
    m, close = env.model, np.testing.assert_allclose
    for i in range(2):
        got = env.sim.get_model(i)
        close(got.body_mass, 1.5 * m.body_mass)
        close(got.body_inertia, 1.5 * m.body_inertia)
        close(got.body_subtreemass, 1.5 * m.body_subtreemass)  # set_const ran
        close(got.geom_friction, 0.6 * m.geom_friction)
        close(got.dof_damping, 1.4 * m.dof_damping)
        close(got.actuator_gainprm[:, 0], 0.7 * m.actuator_gainprm[:, 0])
        close(got.actuator_gainprm[:, 1:], m.actuator_gainprm[:, 1:])
        close(got.actuator_biasprm[:, 1:3], 0.7 * m.actuator_biasprm[:, 1:3])
        close(got.actuator_biasprm[:, 0], m.actuator_biasprm[:, 0])
        assert got.opt.timestep == pytest.approx(1.1 * m.opt.timestep)
    assert env.model.body_mass.tolist() == make_env(task).model.body_mass.tolist()


def test_partial_reset_redraws_only_that_env():
    env = make_env("hopper", num_envs=3, randomizer=DomainRandomizer(scale={"mass": [0.5, 2]}))
    env.reset(seed=0)
    before = masses(env)
    env.reset(env_ids=torch.tensor([1]))
    after = masses(env)
    assert torch.equal(after[[0, 2]], before[[0, 2]])
    assert not torch.equal(after[1], before[1])


@pytest.mark.parametrize("name", list(SCALED))
def test_each_randomised_field_changes_the_physics(name):
    """Factor 1 and factor 1.3 make the same draws (same initial states), so only the
    scaled field can tell the rollouts apart."""
    same = rollout(make_env("hopper", num_envs=2, randomizer=DomainRandomizer(
        scale={name: [1.0, 1.0]})), 15)
    scaled = rollout(make_env("hopper", num_envs=2, randomizer=DomainRandomizer(
        scale={name: [1.3, 1.3]})), 15)
    assert torch.equal(same[0], scaled[0])       # the same initial states
    assert not torch.equal(torch.cat(same[1::4]), torch.cat(scaled[1::4]))


def test_observation_noise_has_the_configured_std_and_zero_mean():
    std, n = 0.05, 256
    clean = reach(n)
    noisy = reach(n, randomizer=DomainRandomizer(obs_noise_std=std))
    # The task's reset draws come before the noise's, so both start from the same states.
    noise = noisy.reset(seed=0)["state"] - clean.reset(seed=0)["state"]
    assert abs(float(noise.mean())) < 4 * std / noise.numel() ** 0.5
    assert float(noise.std()) == pytest.approx(std, rel=0.05)
    # Final observations (for bootstrapping) carry noise too: until the auto-reset both
    # envs take the same steps, so the clean twin's last observation is the noise-free one.
    actions = torch.zeros(n, 2)
    for _ in range(clean.max_episode_steps - 1):
        clean.step(actions)
        noisy.step(actions)
    *_, clean_truncated, clean_info = clean.step(actions)
    obs, _, _, truncated, info = noisy.step(actions)
    assert truncated.all() and clean_truncated.all()
    final_noise = info["final_obs"]["state"] - clean_info["final_obs"]["state"]
    # ...and so do the first observations of the episodes the auto-reset started.
    fresh_noise = obs["state"] - noisy.task.observe(noisy.sim).float()
    for noise in (final_noise, fresh_noise):
        assert float(noise.std()) == pytest.approx(std, rel=0.1)
        assert abs(float(noise.mean())) < 4 * std / noise.numel() ** 0.5


def test_observation_noise_leaves_images_alone():
    kwargs = {"num_envs": 2, "cameras": ("top",), "image_size": 32}
    clean = reach(**kwargs).reset(seed=0)
    noisy = reach(randomizer=DomainRandomizer(obs_noise_std=0.1), **kwargs).reset(seed=0)
    assert torch.equal(noisy["rgb_top"], clean["rgb_top"])
    assert not torch.equal(noisy["state"], clean["state"])


@pytest.mark.parametrize("k", [0, 1, 3])
def test_action_delay_applies_each_action_exactly_k_steps_later(k):
    env = reach(2, randomizer=DomainRandomizer(action_delay=k))
    env.reset(seed=0)
    commanded = [torch.full((2, 2), 0.1 * (t + 1)) for t in range(8)]
    zero = torch.zeros(2, 2, dtype=torch.float64)
    for t, action in enumerate(commanded):
        env.step(action)
        expected = commanded[t - k] if t >= k else zero  # the queue starts with zeros
        assert torch.equal(env.sim.field("ctrl"), ctrl_of(env, expected)), (t, k)


def test_action_queues_reset_on_that_envs_episode_end_only():
    k = 2
    env = reach(2, randomizer=DomainRandomizer(action_delay=k))
    env.reset(seed=0)
    step = [torch.tensor([[0.5, 0.5], [-0.5, -0.5]]), torch.tensor([[0.2, 0.2], [-0.2, -0.2]])]
    for action in step:
        env.step(action)
    env.reset(env_ids=torch.tensor([0]))          # env 0's episode ends, env 1's goes on
    env.step(torch.zeros(2, 2))
    expected = ctrl_of(env, torch.stack([torch.zeros(2), step[0][1]]))  # refilled / kept
    assert torch.equal(env.sim.field("ctrl"), expected)
    # The automatic reset at truncation: env 1 ends first now (env 0 restarted later).
    hold = torch.full((2, 2), 0.3)
    while True:
        _, _, terminated, truncated, _ = env.step(hold)
        if (terminated | truncated).any():
            break
    assert truncated.tolist() == [False, True] and not terminated.any()
    env.step(hold)
    expected = ctrl_of(env, torch.stack([hold[0], torch.zeros(2)]))
    assert torch.equal(env.sim.field("ctrl"), expected)


def test_none_config_changes_nothing_bit_for_bit():
    plain = rollout(make_env("hopper", num_envs=3), 80)   # hoppers fall: auto-resets too
    none = make_env("hopper", num_envs=3, randomizer=DomainRandomizer.from_config(config("none")))
    assert same(plain, rollout(none, 80))
    assert torch.equal(masses(none)[0], torch.as_tensor(none.model.body_mass))
    # ...while the default config does change them (so the comparison above can fail).
    default = make_env("hopper", num_envs=3,
                       randomizer=DomainRandomizer.from_config(config("default")))
    assert not same(plain, rollout(default, 80))
    assert DomainRandomizer().scale == {} and DomainRandomizer.from_config(None).scale == {}


def test_finetune_config_composes_with_each_randomization(capsys):
    from embodied.cli import compose, main

    assert main(["finetune", "--cfg", "randomization=default"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["randomization"] == config("default")
    assert printed["randomization"]["scale"]["mass"] == [0.8, 1.2]
    assert compose("finetune", [])["randomization"]["scale"] == {}   # none by default
    for path in sorted((CONFIGS_DIR / "randomization").glob("*.yaml")):
        DomainRandomizer.from_config(yaml.safe_load(path.read_text()))  # every one is valid


def test_finetune_randomises_the_training_env_only(tmp_path, monkeypatch):
    import embodied.algos
    from embodied.cli import compose
    from embodied.commands import finetune_command

    class Stop(Exception):
        pass

    class FakeAlgo:
        env = reach(2)
        iteration = 0

        def resume(self):
            return False

        def train(self):
            raise Stop

    built = {}

    def fake_make_finetune(name, base, task, settings, run_dir, task_options=None):
        built["task_options"] = task_options
        return FakeAlgo()

    monkeypatch.setattr(embodied.algos, "make_finetune", fake_make_finetune)
    cfg = compose("finetune", ["task=reach", "base=null", "randomization=default",
                               f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(Stop):
        finetune_command(cfg)
    randomizer = FakeAlgo.env.randomizer
    assert isinstance(randomizer, DomainRandomizer)
    assert randomizer.scale["friction"] == (0.7, 1.3) and randomizer.action_delay == 1
    assert "randomizer" not in built["task_options"]  # evaluation envs stay nominal


def test_errors_name_the_problem_and_the_fix():
    with pytest.raises(ConfigError, match="valid: .*'mass'.*'friction'"):
        DomainRandomizer(scale={"masss": [0.8, 1.2]})
    with pytest.raises(ConfigError, match="valid: .*'action_delay'"):
        DomainRandomizer.from_config({"delay": 2})
    for bad in ([1.2, 0.8], [0.0, 1.0], [1.0], "wide"):
        with pytest.raises(ConfigError, match="0 < low <= high"):
            DomainRandomizer(scale={"mass": bad})
    with pytest.raises(ConfigError, match="integer >= 0"):
        DomainRandomizer(action_delay=-1)
    with pytest.raises(ConfigError, match=">= 0"):
        DomainRandomizer(obs_noise_std=-0.1)
    shared = DomainRandomizer(action_delay=1)
    reach(2, randomizer=shared)
    with pytest.raises(ValueError, match="one per env"):
        reach(2, randomizer=shared)


def test_envs_never_import_sim2real():
    """The layers: sim2real builds on envs, so envs knows only the Randomizer hook."""
    for path in ENVS_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("embodied.sim2real") for n in names), path


def test_locomotion_velocity_uses_each_envs_own_timestep():
    """A randomised timestep changes the control period: the reward's forward velocity is
    displacement over that env's own dt, not the nominal one."""
    randomizer = DomainRandomizer(scale={"timestep": [1.1, 1.1]})
    env = make_env("hopper", num_envs=2, randomizer=randomizer)
    env.reset(seed=0)
    x_before = env.task.before_step(env.sim)
    env.step(torch.full((2, env.action_dim), 0.5))
    dt = env.sim.get_model(0).opt.timestep * env.task.frame_skip
    assert dt == pytest.approx(1.1 * 0.002 * env.task.frame_skip)
    true_velocity = (env.sim.field("qpos")[:, 0] - x_before) / dt
    torch.testing.assert_close(env.task.forward_velocity(env.sim, x_before), true_velocity)
