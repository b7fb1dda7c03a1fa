"""The CLI's commands: each takes the composed Hydra config of `configs/<command>.yaml`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from embodied.core.checkpoint import STATE_FILE, prepare_run_dir
from embodied.core.errors import ConfigError
from embodied.core.io import atomic_write_json, atomic_write_text
from embodied.core.paths import resolve_shipped


def _options(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.task.options, resolve=True) or {}


def _start_run(cfg: DictConfig, resumable: bool = False, inputs: tuple[Path, ...] = ()) -> Path:
    """The run directory, with the resolved config written into it. A resumable run
    (pretrain, finetune) first reconciles what an earlier run left there and says so."""
    import torch

    # Small policy nets gain nothing from intra-op threads, and they fight the simulator's
    # threads for the cores; raise torch_threads for big (image, VLA) models.
    torch.set_num_threads(int(cfg.get("torch_threads", 1)))
    run_dir = Path(cfg.run_dir)
    if resumable:
        print(prepare_run_dir(run_dir, run_dir / STATE_FILE, resume=bool(cfg.resume),
                              overwrite=bool(cfg.get("overwrite", False)), inputs=inputs))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir {run_dir} is a file, not a directory: pass another "
                          "run_dir=...")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def collect_command(cfg: DictConfig) -> dict[str, Any]:
    from embodied.data.collect import collect

    run_dir = _start_run(cfg)
    summary = collect(
        cfg.task.name, cfg.episodes, cfg.out, num_envs=cfg.num_envs, noise=cfg.noise,
        seed=cfg.seed, only_success=cfg.only_success, cameras=tuple(cfg.cameras),
        image_size=cfg.image_size, video_dir=run_dir / "videos" if cfg.video else None,
        video_episodes=cfg.video_episodes, nthread=cfg.nthread, task_options=_options(cfg),
    )
    atomic_write_json(run_dir / "summary.json", summary)
    print(f"dataset: {summary['dataset']} ({summary['episodes']} episodes, "
          f"{summary['frames']} frames); expert success {summary['success_rate']:.0%} "
          f"over {summary['episodes_seen']} episodes")
    for video in summary["videos"]:
        print(f"video: {video}")
    print(json.dumps(summary))
    return summary


def pretrain_command(cfg: DictConfig) -> dict[str, Any]:
    from embodied.algos.bc import BCConfig, BCTrainer
    from embodied.core.seeding import seed_everything
    from embodied.data.dataset import EpisodeDataset
    from embodied.data.windows import ChunkWindows
    from embodied.policies.config import PolicyConfig
    from embodied.policies.policy import ChunkPolicy

    dataset = EpisodeDataset(cfg.dataset)
    run_dir = _start_run(cfg, resumable=True, inputs=(Path(cfg.dataset),))
    seed_everything(cfg.train.seed)  # the policy's initial weights
    policy_fields = OmegaConf.to_container(cfg.policy, resolve=True)
    policy_config = PolicyConfig(
        obs_dim=dataset.features["observation.state"].shape[0],
        action_dim=dataset.features["action"].shape[0], **policy_fields)
    policy = ChunkPolicy(policy_config)
    policy.fit_normalizers(dataset.stats)
    windows = ChunkWindows(dataset, policy_config.n_obs_steps, policy_config.horizon,
                           tuple(policy_config.cameras))
    bc = BCConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    trainer = BCTrainer(policy, windows, bc, run_dir, task=cfg.task.name,
                        task_options=_options(cfg), resume=cfg.resume)
    print(f"pretrain {policy_config.kind}/{policy_config.net} on {dataset.num_episodes} "
          f"episodes ({len(windows)} windows) -> {run_dir}")
    summary = trainer.train()
    atomic_write_json(run_dir / "summary.json", summary)
    print(json.dumps(summary))
    return summary


def eval_command(cfg: DictConfig) -> dict[str, Any]:
    from embodied.policies.residual import load_policy
    from embodied.rollout import evaluate

    if not cfg.checkpoint:
        raise SystemExit("embodied eval: pass checkpoint=<policy dir> (e.g. runs/x/policy)")
    run_dir = _start_run(cfg)
    policy = load_policy(resolve_shipped(cfg.checkpoint))
    video = run_dir / "videos" / "eval.mp4" if cfg.video else None
    result = evaluate(policy, cfg.task.name, cfg.episodes, seed=cfg.seed,
                      task_options=_options(cfg), video_path=video,
                      deterministic=cfg.deterministic)
    result["checkpoint"] = str(cfg.checkpoint)
    atomic_write_json(run_dir / "summary.json", result)
    print(f"{cfg.task.name}: success {result['success_rate']:.1%} over {result['episodes']} "
          f"episodes (seed {cfg.seed}), return {result['return_mean']:.1f}")
    if video:
        print(f"video: {video}")
    print(json.dumps(result))
    return result


def finetune_command(cfg: DictConfig) -> dict[str, Any]:
    from embodied.algos import make_finetune
    from embodied.policies.policy import ChunkPolicy

    settings = OmegaConf.to_container(cfg.algo, resolve=True)
    name = settings.pop("algorithm")
    base = ChunkPolicy.from_pretrained(resolve_shipped(cfg.base)) if cfg.base else None
    run_dir = _start_run(cfg, resumable=True,
                         inputs=(resolve_shipped(cfg.base),) if cfg.base else ())
    algo = make_finetune(name, base, cfg.task.name, settings, run_dir, _options(cfg))
    if cfg.get("randomization") is not None:  # the training env only: eval stays nominal
        from embodied.sim2real.randomization import DomainRandomizer

        algo.env.set_randomizer(DomainRandomizer.from_config(
            OmegaConf.to_container(cfg.randomization, resolve=True)))
    if cfg.resume and algo.resume():
        print(f"resuming from iteration {algo.iteration} of {run_dir}")
    print(f"finetune {cfg.task.name} from {cfg.base or 'scratch'} with {name} -> {run_dir}")
    summary = algo.train()
    summary["algorithm"] = name
    atomic_write_json(run_dir / "summary.json", summary)
    before = summary["success_before"]
    print(f"success {'n/a' if before is None else f'{before:.0%}'} -> "
          f"{summary['success_after']:.0%} over {summary['episodes']} episodes "
          f"(same protocol, eval seed 10000)")
    print(f"curve: {summary['curve']}")
    if summary.get("video"):
        print(f"video: {summary['video']}")
    print(json.dumps(summary))
    return summary


def _robot_settings(cfg: DictConfig) -> dict[str, Any]:
    """What `embodied.sim2real.deploy.deploy` and `record` share, from their configs."""
    return {"transport": cfg.transport, "rate_hz": cfg.rate_hz, "seed": cfg.seed,
            "task_options": _options(cfg), "obs_timeout_s": cfg.obs_timeout_s,
            "connect_timeout_s": cfg.connect_timeout_s}


def deploy_command(cfg: DictConfig) -> dict[str, Any]:
    import sys

    from embodied.core.errors import EmbodiedError
    from embodied.sim2real.deploy import deploy

    if not cfg.checkpoint:
        raise SystemExit("embodied deploy: pass policy=<policy dir> (e.g. "
                         "assets/base/push_cube_flow)")
    run_dir = _start_run(cfg)
    # The control loop shares the interpreter with the policy: hand the GIL over every 1 ms
    # (default 5 ms), so the executor thread wakes close to its deadlines.
    sys.setswitchinterval(0.001)
    robot = OmegaConf.to_container(cfg.robot, resolve=True)
    print(f"deploy {cfg.checkpoint} on robot {robot['name']} ({cfg.task.name}) over "
          f"{cfg.transport}")
    try:
        summary = deploy(robot, cfg.checkpoint, cfg.task.name, episodes=cfg.episodes,
                         merge=cfg.merge, replan_every=cfg.replan_every,
                         deterministic=cfg.deterministic, run_dir=run_dir,
                         **_robot_settings(cfg))
    except EmbodiedError as e:  # robot unreachable or mismatched: the message says the fix
        raise SystemExit(f"embodied deploy: {e}") from None
    atomic_write_json(run_dir / "summary.json", summary)
    rate = "n/a" if summary["success_rate"] is None else f"{summary['success_rate']:.0%}"
    print(f"success {rate} over {summary['episodes']} episodes at {summary['rate_hz']:g} Hz; "
          f"deadline misses {summary['deadline_misses']}; safety interventions "
          f"{summary['interventions'] or 'none'} (log: {run_dir / 'interventions.jsonl'})")
    print(json.dumps(summary))
    return summary


def record_command(cfg: DictConfig) -> dict[str, Any]:
    from embodied.core.errors import EmbodiedError
    from embodied.sim2real.deploy import record

    run_dir = _start_run(cfg)
    robot = OmegaConf.to_container(cfg.robot, resolve=True)
    print(f"record {cfg.episodes} episodes from robot {robot['name']} ({cfg.task.name}, "
          f"teleop {cfg.teleop}) over {cfg.transport} -> {cfg.repo}")
    try:
        summary = record(robot, cfg.task.name, cfg.repo, episodes=cfg.episodes,
                         teleop=cfg.teleop, noise=cfg.noise, run_dir=run_dir,
                         **_robot_settings(cfg))
    except EmbodiedError as e:
        raise SystemExit(f"embodied record: {e}") from None
    atomic_write_json(run_dir / "summary.json", summary)
    print(f"dataset: {summary['dataset']} (+{summary['episodes']} episodes, "
          f"{summary['frames']} frames; {summary['dataset_episodes']} in all); success "
          f"{summary['success_rate']:.0%}")
    print(json.dumps(summary))
    return summary
