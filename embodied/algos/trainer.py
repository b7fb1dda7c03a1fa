"""The training loop every fine-tuning algorithm shares: evaluation, logging, checkpoints.

A learner (ChainPPO today, the off-policy learners next) does one iteration of its own
work in `iterate(iteration)`; the trainer evaluates it every `eval_every` iterations and at
the end (the same protocol before and after: 100 episodes, deterministic policy, eval seed
10000), writes metrics.jsonl + TensorBoard and the learning curve, checkpoints atomically
every `checkpoint_every` iterations and resumes exactly from the last checkpoint.

Exact resume: at every checkpoint boundary (and after an evaluation, which shares the
policy's per-env state) the learner restarts its episodes with seeds derived from the
iteration, so a run resumed from a checkpoint is bit-identical to one never interrupted.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from embodied.core.checkpoint import STATE_FILE, load_training_state, truncate_metrics
from embodied.core.errors import ConfigError
from embodied.core.io import atomic_write
from embodied.core.progress import Progress
from embodied.core.runlog import RunLogger, plot_curve

EVAL_SEED = 10_000


@dataclass
class TrainerConfig:
    num_envs: int = 64
    iterations: int = 100
    eval_every: int = 10
    """Evaluate every this many iterations (0: only after training, no baseline)."""
    eval_episodes: int = 100
    checkpoint_every: int = 10
    seed: int = 0
    video: bool = True

    def __post_init__(self) -> None:
        for name in ("num_envs", "eval_episodes", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("iterations", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


class Learner(Protocol):
    policy: Any          # evaluated and saved as the run's `policy/`
    env_steps: int

    def restart(self, iteration: int) -> None:
        """Fresh episodes in every training env, seeded from the iteration."""

    def iterate(self, iteration: int) -> dict[str, float]:
        """One iteration (collect + update); metrics, with seconds_sim/policy/update."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Trainer:
    def __init__(self, learner: Learner, task: str, config: TrainerConfig,
                 run_dir: str | Path, task_options: dict | None = None) -> None:
        self.learner, self.task, self.cfg = learner, task, config
        self.task_options = task_options or {}
        self.run_dir = Path(run_dir)
        self.state_path = self.run_dir / STATE_FILE
        self.iteration = 0
        self.before: dict[str, Any] | None = None
        self._purge_step: int | None = None  # TensorBoard drops events from here on resume

    def train(self, progress: bool = True) -> dict[str, Any]:
        cfg, learner = self.cfg, self.learner
        logger = RunLogger(self.run_dir, purge_step=self._purge_step)
        start = time.time()
        timing = {"sim": 0.0, "policy": 0.0, "update": 0.0}
        bar = Progress(cfg.iterations, initial=self.iteration, desc="finetune",
                       unit="iterations", enabled=progress)
        try:
            while self.iteration < cfg.iterations:
                evaluated = cfg.eval_every and self.iteration % cfg.eval_every == 0
                if evaluated:
                    result = self.evaluate()
                    self.before = self.before or result
                    logger.log(learner.env_steps, success_rate=result["success_rate"],
                               return_mean=result["return_mean"], iteration=self.iteration)
                    bar.write(f"iteration {self.iteration}: success "
                              f"{result['success_rate']:.2f} (env steps {learner.env_steps})")
                if evaluated or self.iteration % cfg.checkpoint_every == 0:
                    learner.restart(self.iteration)
                metrics = learner.iterate(self.iteration)
                for key in timing:
                    timing[key] += metrics.get(f"seconds_{key}", 0.0)
                self.iteration += 1
                logger.log(learner.env_steps, iteration=self.iteration, **metrics)
                bar.update(1)
                bar.set_postfix(success=f"{metrics.get('train_success', float('nan')):.2f}",
                                kl=f"{metrics.get('approx_kl', float('nan')):.1e}")
                if self.iteration % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        # The final checkpoint ends before the final evaluation's row: a run resumed with more
        # iterations continues the curve as if it had never stopped.
        metrics_file = self.run_dir / "metrics.jsonl"
        before_final = metrics_file.stat().st_size if metrics_file.exists() else 0
        after = self.evaluate()
        logger.log(learner.env_steps, success_rate=after["success_rate"],
                   return_mean=after["return_mean"], iteration=self.iteration)
        logger.close()
        self.save_checkpoint(metrics_bytes=before_final)
        curve = plot_curve(self.run_dir, "success_rate", title=f"fine-tuning on {self.task}",
                           xlabel="env steps")
        before = self.before
        return {"task": self.task, "iterations": self.iteration,
                "env_steps": learner.env_steps,
                "success_before": before["success_rate"] if before else None,
                "success_after": after["success_rate"], "episodes": after["episodes"],
                "seconds": round(time.time() - start, 1),
                **{f"seconds_{k}": round(v, 1) for k, v in timing.items()},
                "curve": str(curve) if curve else None, "policy": str(self.run_dir / "policy"),
                "video": after.get("video")}

    def evaluate(self) -> dict[str, Any]:
        from embodied.rollout import evaluate

        video = (self.run_dir / "videos" / f"iter{self.iteration:05d}.mp4"
                 if self.cfg.video else None)
        result = evaluate(self.learner.policy, self.task, self.cfg.eval_episodes,
                          seed=EVAL_SEED, task_options=self.task_options, video_path=video)
        if video is not None:
            result["video"] = str(video)
        return result

    # --- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, metrics_bytes: int | None = None) -> None:
        """Policy directory + the whole training state, each written atomically; the
        metrics file's length is recorded (and the file synced, so it is never shorter
        after a crash) so a resumed run drops rows logged after it."""
        self.learner.policy.save_pretrained(self.run_dir / "policy")
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            with open(metrics, "rb+") as f:
                os.fsync(f.fileno())
        if metrics_bytes is None:
            metrics_bytes = metrics.stat().st_size if metrics.exists() else 0
        state = {"iteration": self.iteration, "env_steps": self.learner.env_steps,
                 "before": self.before, "learner": self.learner.state_dict(),
                 "metrics_bytes": metrics_bytes, "config": asdict(self.cfg)}
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))

    def resume(self) -> bool:
        """Load the last checkpoint of this run directory, if any (True if loaded), and drop
        the metric rows logged after it."""
        if not self.state_path.exists():
            return False
        state = load_training_state(self.state_path)
        saved = state.get("config", {})
        if saved.get("num_envs", self.cfg.num_envs) != self.cfg.num_envs:
            raise ConfigError(f"{self.state_path} was trained with num_envs="
                              f"{saved['num_envs']}, this run has {self.cfg.num_envs}: resume "
                              "with the same num_envs, or pass another run_dir=...")
        changed = sorted(k for k, v in asdict(self.cfg).items()
                         if k in saved and saved[k] != v
                         and k not in ("iterations", "eval_every", "eval_episodes", "video"))
        if changed:
            print(f"resuming with changed settings {changed}: the run is no longer the "
                  "same as one never interrupted")
        try:
            self.learner.load_state_dict(state["learner"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ConfigError(f"{self.state_path} does not fit this run's algorithm and policy "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]}): resume "
                              "with the settings it was made with, or pass another "
                              "run_dir=...") from None
        self.iteration, self.learner.env_steps = state["iteration"], state["env_steps"]
        self.before = state["before"]
        note = truncate_metrics(self.run_dir, state["metrics_bytes"])
        if note:
            print(note)
        self._purge_step = self.learner.env_steps
        return True
