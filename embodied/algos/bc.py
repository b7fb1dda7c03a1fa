"""Behaviour cloning (pretraining) of a chunk policy, with EMA, evaluation and exact resume.

A run directory holds: config.yaml, metrics.jsonl + tensorboard/, checkpoints/train_state.pt
(everything needed to continue bit-exactly: weights, EMA, optimiser, schedule, RNG states),
policy/ (the EMA policy, loadable with ChunkPolicy.from_pretrained), videos/, curve.png.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from embodied.core.checkpoint import load_training_state, truncate_metrics
from embodied.core.errors import ConfigError
from embodied.core.io import atomic_write
from embodied.core.progress import Progress
from embodied.core.runlog import RunLogger, plot_curve
from embodied.data.windows import ChunkWindows
from embodied.policies.policy import ChunkPolicy


@dataclass
class BCConfig:
    steps: int = 3000
    """Gradient steps."""
    batch_size: int = 256
    lr: float = 1e-3
    """Peak learning rate (AdamW), after a linear warmup, then cosine decay to 0."""
    weight_decay: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    """EMA of the weights (warmed up as min(decay, (1 + step) / (10 + step)))."""
    log_every: int = 50
    eval_every: int = 1000
    """Evaluate the EMA policy in batched envs every this many steps (0: only at the end)."""
    eval_episodes: int = 50
    checkpoint_every: int = 500
    seed: int = 0
    video: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be >= 1")


class BCTrainer:
    def __init__(self, policy: ChunkPolicy, windows: ChunkWindows, config: BCConfig,
                 run_dir: str | Path, task: str | None = None,
                 task_options: dict | None = None, resume: bool = False) -> None:
        self.policy, self.windows, self.cfg = policy, windows, config
        self.run_dir = Path(run_dir)
        self.task, self.task_options = task, task_options or {}
        self.ema = copy.deepcopy(policy).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self._purge_step: int | None = None
        self.state_path = self.run_dir / "checkpoints" / "train_state.pt"
        if self.state_path.exists():
            if not resume:
                raise ConfigError(f"{self.run_dir} already holds a training run; pass "
                                  "resume=true to continue it, or choose another name/run_dir")
            self.load_checkpoint()
        if self.step == 0:
            torch.manual_seed(config.seed)  # augmentation draws from the global RNG

    def _lr_factor(self, step: int) -> float:
        warm = self.cfg.warmup_steps
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, self.cfg.steps - warm)
        return 0.5 * (1 + torch.cos(torch.tensor(min(progress, 1.0) * torch.pi)).item())

    def _update_ema(self) -> None:
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.policy.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
            for e, b in zip(self.ema.buffers(), self.policy.buffers(), strict=True):
                e.copy_(b)

    def train(self, progress: bool = True) -> dict[str, Any]:
        logger = RunLogger(self.run_dir, purge_step=self._purge_step)
        bar = Progress(self.cfg.steps, initial=self.step, desc="pretrain", unit="steps",
                       enabled=progress)
        last_eval: dict[str, Any] = {}
        start, losses = time.time(), []
        self.policy.train()
        try:
            while self.step < self.cfg.steps:
                obs, actions = self.windows.sample(self.cfg.batch_size, self.generator)
                loss = self.policy.bc_loss(obs, actions, generator=self.generator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"BC loss is {loss.item()} at step {self.step}; "
                                             "the last checkpoint is intact (lower lr?)")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self._update_ema()
                losses.append(loss.item())
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    mean_loss = sum(losses) / len(losses)
                    losses = []
                    logger.log(self.step, loss=mean_loss, lr=self.scheduler.get_last_lr()[0])
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                evaluate_now = self.cfg.eval_every and self.step % self.cfg.eval_every == 0
                if self.task and (evaluate_now or self.step == self.cfg.steps):
                    last_eval = self.evaluate()
                    logger.log(self.step, success_rate=last_eval["success_rate"],
                               return_mean=last_eval["return_mean"])
                    bar.write(f"step {self.step}: success {last_eval['success_rate']:.2f} "
                              f"over {last_eval['episodes']} episodes")
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            bar.write("interrupted: the last checkpoint is kept; resume with resume=true")
            raise
        finally:
            bar.close()
            logger.close()
        curve = plot_curve(self.run_dir, "success_rate", title=f"BC on {self.task}")
        return {"steps": self.step, "seconds": round(time.time() - start, 1),
                "policy": str(self.run_dir / "policy"), "curve": str(curve) if curve else None,
                **{f"eval_{k}": v for k, v in last_eval.items()}}

    def evaluate(self) -> dict[str, Any]:
        from embodied.rollout import evaluate

        video = (self.run_dir / "videos" / f"eval_step{self.step:06d}.mp4"
                 if self.cfg.video else None)
        result = evaluate(self.ema, self.task, self.cfg.eval_episodes, seed=10_000,
                          task_options=self.task_options, video_path=video)
        self.policy.train()
        return result

    # --- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Policy + training state, atomically; the metrics file's length is recorded so a
        resumed run drops the rows logged after it."""
        self.ema.save_pretrained(self.run_dir / "policy")
        metrics = self.run_dir / "metrics.jsonl"
        state = {
            "step": self.step, "policy": self.policy.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "bc_config": asdict(self.cfg), "policy_config": self.policy.config.to_dict(),
            "metrics_bytes": metrics.stat().st_size if metrics.exists() else 0,
        }
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> None:
        state = load_training_state(self.state_path)
        if state["policy_config"] != self.policy.config.to_dict():
            raise ConfigError(f"{self.state_path} was made with another policy config; use a "
                              "new run_dir, or the same policy settings to resume")
        self.policy.load_state_dict(state["policy"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        truncate_metrics(self.run_dir, state.get("metrics_bytes", 0))
        self._purge_step = self.step
