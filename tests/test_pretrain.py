"""BC pretraining: exact resume after an interruption, and the CLI end to end."""

import json
import subprocess
import sys

import pytest
import torch

from embodied.algos.bc import BCConfig, BCTrainer
from embodied.core.errors import ConfigError
from embodied.data.collect import collect
from embodied.data.dataset import EpisodeDataset
from embodied.data.windows import ChunkWindows
from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy


@pytest.fixture(scope="module")
def reach_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reach") / "data"
    collect("reach", 30, root, num_envs=10, noise=0.2, progress=False)
    return root


def make_trainer(data_root, run_dir, resume=False, steps=20):
    dataset = EpisodeDataset(data_root)
    torch.manual_seed(123)  # the same initial weights for every trainer
    policy = ChunkPolicy(PolicyConfig(kind="flow", obs_dim=8, action_dim=2, horizon=4,
                                      n_action_steps=2, net_kwargs={"hidden": 64, "depth": 2}))
    policy.fit_normalizers(dataset.stats)
    windows = ChunkWindows(dataset, 1, 4)
    config = BCConfig(steps=steps, batch_size=32, checkpoint_every=10, eval_every=0,
                      log_every=5, video=False, warmup_steps=5)
    return BCTrainer(policy, windows, config, run_dir, resume=resume)


def test_resume_after_interruption_is_exact(reach_data, tmp_path, monkeypatch):
    straight = make_trainer(reach_data, tmp_path / "a")
    straight.train(progress=False)

    interrupted = make_trainer(reach_data, tmp_path / "b")
    original_save = BCTrainer.save_checkpoint

    def save_then_interrupt(self):
        original_save(self)
        raise KeyboardInterrupt  # as if Ctrl-C came right after the step-10 checkpoint

    monkeypatch.setattr(BCTrainer, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train(progress=False)
    monkeypatch.setattr(BCTrainer, "save_checkpoint", original_save)
    assert interrupted.step == 10

    with pytest.raises(ConfigError, match="resume=true"):
        make_trainer(reach_data, tmp_path / "b")
    resumed = make_trainer(reach_data, tmp_path / "b", resume=True)
    assert resumed.step == 10
    resumed.train(progress=False)
    for key, value in straight.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key
    for key, value in straight.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[key]), key
    saved = ChunkPolicy.from_pretrained(tmp_path / "b" / "policy")
    obs = torch.randn(3, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(saved.act(obs, generator=g1), resumed.ema.act(obs, generator=g2))


def test_cli_pretrain_then_eval(reach_data, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "embodied.cli", "pretrain", "task=reach",
           f"dataset={reach_data}", f"run_dir={run}", "train.steps=400",
           "train.eval_every=0", "train.eval_episodes=20", "train.video=false"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 400 and summary["eval_success_rate"] >= 0.8
    for name in ["config.yaml", "metrics.jsonl", "curve.png", "policy/config.json",
                 "policy/model.safetensors", "checkpoints/train_state.pt"]:
        assert (run / name).exists(), name
    assert list((run / "tensorboard").iterdir())

    cmd = [sys.executable, "-m", "embodied.cli", "eval", "task=reach",
           f"checkpoint={run / 'policy'}", "episodes=20", f"run_dir={tmp_path / 'eval'}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads(result.stdout.strip().splitlines()[-1])
    assert evaluation["episodes"] == 20 and evaluation["success_rate"] >= 0.8
    assert (tmp_path / "eval" / "videos" / "eval.mp4").stat().st_size > 1000


def test_image_policy_trains_and_runs_from_camera_datasets(tmp_path):
    from embodied.rollout import evaluate

    root = tmp_path / "cam"
    collect("reach", 4, root, num_envs=4, cameras=("top",), image_size=32, progress=False)
    dataset = EpisodeDataset(root)
    assert dataset.episode(0)["observation.images.top"].shape[1:] == (32, 32, 3)
    config = PolicyConfig(kind="flow", obs_dim=8, action_dim=2, horizon=4, n_action_steps=2,
                          n_obs_steps=2, cameras=["top"], image_size=32)
    policy = ChunkPolicy(config)
    policy.fit_normalizers(dataset.stats)
    windows = ChunkWindows(dataset, 2, 4, cameras=("top",))
    obs, actions = windows.sample(8, torch.Generator().manual_seed(0))
    assert obs["rgb_top"].shape == (8, 2, 32, 32, 3) and obs["rgb_top"].dtype == torch.uint8
    trainer = BCTrainer(policy, windows, BCConfig(steps=3, batch_size=8, eval_every=0,
                                                  video=False), tmp_path / "run")
    trainer.train(progress=False)
    result = evaluate(ChunkPolicy.from_pretrained(tmp_path / "run" / "policy"), "reach", 4)
    assert result["episodes"] == 4
