"""The collector: real observation histories (the same in fine-tuning as in evaluation),
per-env restarts, final observations for bootstrapping, per-step transitions, tensor
episode statistics; and an image policy fine-tuned end to end through it."""

from types import SimpleNamespace

import pytest
import torch

from embodied.envs import make_env
from embodied.policies.samplers import Chain
from embodied.rollout import Collector, ObsHistory


class ConstantPolicy:
    """Acts a constant and records every observation history it is given."""

    def __init__(self, obs_dim, action_dim, n_obs_steps=2, n_action_steps=2):
        self.config = SimpleNamespace(obs_dim=obs_dim, action_dim=action_dim,
                                      n_obs_steps=n_obs_steps, n_action_steps=n_action_steps,
                                      cameras=[], image_size=96)
        self.dtype = torch.float32
        self.seen: list[torch.Tensor] = []

    def reset(self, num_envs):
        pass

    def end_episodes(self, ended):
        pass

    def sample(self, obs, generator=None, deterministic=False):
        self.seen.append(obs["state"].clone())
        n = obs["state"].shape[0]
        chunk = torch.full((n, self.config.n_action_steps, self.config.action_dim), 0.5)
        return chunk, Chain(torch.zeros(n, 2, 1, 1), torch.zeros(n, 1))

    def act(self, obs, generator=None, deterministic=True):
        return self.sample(obs, generator, deterministic)[0]


def test_history_in_fine_tuning_equals_evaluation_and_is_real():
    env = make_env("reach", num_envs=4)
    truth = [env.reset(seed=7)["state"]]
    for _ in range(6):
        truth.append(env.step(torch.full((4, env.action_dim), 0.5))[0]["state"])
    finetune, evaluation = (ConstantPolicy(env.obs_dim, env.action_dim) for _ in range(2))
    collector = Collector(make_env("reach", num_envs=4), finetune)
    collector.reset(seed=7)
    for _ in range(3):
        collector.decision()
    collector = Collector(make_env("reach", num_envs=4), evaluation)
    collector.reset(seed=7)
    collector.first_episodes()
    for j, seen in enumerate(finetune.seen):  # decision j is taken at env step 2j
        assert torch.equal(seen, evaluation.seen[j])  # the same history in both loops
        t = 2 * j
        assert torch.equal(seen[:, 1], truth[t])
        assert torch.equal(seen[:, 0], truth[max(t - 1, 0)])  # the real previous frame
    assert not torch.equal(finetune.seen[1][:, 0], finetune.seen[1][:, 1])


def test_obs_history_restarts_only_the_envs_that_ended():
    history = ObsHistory(3)
    history.start({"state": torch.zeros(2, 1)})
    history.after_step({"state": torch.ones(2, 1)}, torch.tensor([False, False]), None)
    final = history.after_step({"state": torch.full((2, 1), 5.0)}, torch.tensor([True, False]),
                               {"state": torch.full((2, 1), 2.0)})
    frames = history.get()["state"][..., 0]
    assert frames[0].tolist() == [5.0, 5.0, 5.0]  # env 0: its next episode's first frame
    assert frames[1].tolist() == [0.0, 1.0, 5.0]  # env 1 untouched by env 0's reset
    assert final["state"][0, :, 0].tolist() == [0.0, 1.0, 2.0]  # ends in the final obs


def test_decision_records_final_history_steps_and_stats():
    env = make_env("reach", num_envs=3)
    policy = ConstantPolicy(env.obs_dim, env.action_dim, n_obs_steps=2, n_action_steps=5)
    collector = Collector(env, policy)
    collector.reset(seed=1)
    decisions = [collector.decision(keep_steps=True) for _ in range(10)]  # 50 = the horizon
    last = decisions[-1]
    assert last.truncated.all() and not last.terminated.any()
    step = last.steps[-1]
    assert step.truncated.all()
    # The final history ends in the last observation of the episode, not the next start.
    assert torch.equal(last.final_obs["state"], step.next_obs["state"])
    assert not torch.equal(last.final_obs["state"][:, -1], last.next_obs["state"][:, -1])
    assert torch.equal(last.next_obs["state"][:, 0], last.next_obs["state"][:, 1])  # restarted
    summary = collector.stats.summary()
    assert summary["episodes"] == 3 and 0.0 <= summary["train_success"] <= 1.0
    assert torch.equal(decisions[3].steps[0].obs["state"], decisions[2].next_obs["state"])


PIXEL_ALGORITHMS = {
    "reinflow": {}, "flow_noise": {}, "flow_sde": {}, "flow_sde_hybrid": {"sampler": "sde_hybrid"},
    "dppo": {"sampler": "sde", "sampler_kwargs": {}, "finetune_steps": 1},
    "grpo": {"advantage": "grpo", "group_size": 2}, "resip": {},
    "gaussian_ppo": {"cameras": ["top"], "image_size": 32, "n_obs_steps": 2},
}


@pytest.mark.parametrize("name", sorted(PIXEL_ALGORITHMS))
def test_every_algorithm_fine_tunes_an_image_policy(name, tmp_path):
    """Every on-policy algorithm on a camera + state policy with a two-frame history: the
    rollout keeps the images as uint8 histories, the critic reads the encoder's features,
    the ratio check passes and the trained weights move."""
    from embodied.algos import make_finetune
    from embodied.policies.config import PolicyConfig
    from embodied.policies.policy import ChunkPolicy

    torch.manual_seed(0)
    base = ChunkPolicy(PolicyConfig(obs_dim=8, action_dim=2, horizon=4, n_action_steps=2,
                                    n_obs_steps=2, num_steps=2, cameras=["top"], image_size=32,
                                    net_kwargs={"hidden": 32, "depth": 1}))
    algorithm = {"grpo": "reinflow", "flow_sde_hybrid": "flow_sde"}.get(name, name)
    settings = {"num_envs": 4, "decisions_per_iteration": 3, "minibatch_size": 6, "epochs": 1,
                "eval_every": 0, "eval_episodes": 2, "video": False, "iterations": 1,
                "actor_lr": 1e-3, **PIXEL_ALGORITHMS[name]}
    algo = make_finetune(algorithm, base, "reach", settings, tmp_path)
    rollout, _ = algo.collect()
    images = rollout.obs["rgb_top"]
    assert images.dtype == torch.uint8 and images.shape[1:] == (4, 2, 32, 32, 3)
    assert not torch.equal(images[1, :, 0], images[1, :, 1])  # a real two-frame history
    trained = {k: v.clone() for k, v in algo.policy.state_dict().items()}
    summary = algo.train(progress=False)
    assert summary["iterations"] == 1
    moved = [k for k, v in algo.policy.state_dict().items() if not torch.equal(v, trained[k])]
    assert moved
    if name not in ("resip", "dppo"):  # those keep the base's encoder frozen
        assert any(k.startswith("encoder.") and "image" in k for k in moved), moved


def test_episode_stats_count_short_episodes_inside_leftover_steps():
    """Episodes that start and end within one chunk's leftover steps are counted too."""
    env = make_env("reach", num_envs=2, max_episode_steps=3)
    policy = ConstantPolicy(env.obs_dim, env.action_dim, n_obs_steps=1, n_action_steps=8)
    collector = Collector(env, policy)
    collector.reset(seed=0)
    for _ in range(3):
        collector.decision()
    assert collector.stats.summary()["episodes"] == 2 * (3 * 8 // 3)  # 8 per env
