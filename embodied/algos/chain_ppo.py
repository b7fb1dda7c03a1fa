"""The on-policy learner: the collector's decisions into a PPO update, for any policy.

The algorithm files (reinflow, flow_noise, flow_sde, dppo, resip, gaussian_ppo) set up the
trainable policy and the config; this file collects, `algos/ppo.py` updates, and
`algos/trainer.py` evaluates, logs and checkpoints. A policy here is anything with
`sample(obs, generator) -> (chunk, Chain)`, `score_steps(obs, chain, first)`, `encode`,
`feature_dim`, `num_chain_steps`, `reset(num_envs)` and `end_episodes(mask)`: a ChunkPolicy
(flow / diffusion chains, or a Gaussian as a one-step chain) or a ResidualPolicy.

Shapes: N envs, T decisions per env per iteration, Ta executed actions per decision,
K denoising steps, Tp predicted steps, Da action dims, To observation history.

One decision = one policy call = one chunk of Ta env steps (see rollout.Decision). Its
reward is the sum of the rewards of the executed steps; GAE runs over decisions. The policy
sees the same observation history (To frames of state and images) as at evaluation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embodied.algos.common import ReturnNormalizer
from embodied.algos.ppo import (  # noqa: F401 - TrainingDiverged is part of this module's API
    DecisionRatio,
    PPOConfig,
    PPOUpdate,
    Rollout,
    StepRatio,
    TrainingDiverged,
)
from embodied.algos.trainer import Trainer
from embodied.core.errors import ConfigError
from embodied.envs import make_env
from embodied.policies.nets import ValueMLP
from embodied.rollout import Collector


@dataclass
class ChainPPOConfig(PPOConfig):
    """PPO on a denoising chain: which sampler, how many steps train, how they are scored."""

    sampler: str = "learned_noise"
    """Stochastic sampler for rollouts and ratios: learned_noise (ReinFlow, Flow-Noise),
    sde / sde_hybrid (Flow-SDE), ddpm / ddim (diffusion chains)."""
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    num_steps: int | None = None
    """Denoising steps K for fine-tuning (None: the base policy's)."""
    ratio: str = "chain"
    """chain: one ratio per decision from the joint log-likelihood of the trained steps
    (ReinFlow, pi_RL); per_step: one PPO term per denoising step (DPPO)."""
    finetune_steps: int | None = None
    """DPPO's K': train only the last K' denoising steps; the first K - K' run a frozen copy
    of the base, noise included (None: all steps train)."""
    denoising_discount: float = 1.0
    """per_step: denoising step k's advantage is scaled by discount^(K'-1-k) (DPPO 0.99)."""
    clip_first: float | None = None
    """per_step: the first fine-tuned step's clip; it rises exponentially to `clip` at the
    last step (DPPO 1e-3 -> 1e-2). None: `clip` at every step."""
    bc_coef: float = 0.0
    """Weight of MSE between deterministic actions of base and fine-tuned policy (same x0,
    the fine-tuned policy's sampler and K)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ratio not in ("chain", "per_step"):
            raise ConfigError(f"ratio must be chain or per_step, got {self.ratio!r}")
        if self.finetune_steps is not None and self.finetune_steps < 1:
            raise ConfigError(f"finetune_steps (K') must be >= 1, got {self.finetune_steps}")
        if self.bc_coef < 0:
            raise ConfigError(f"bc_coef must be >= 0, got {self.bc_coef}")

    def clip_schedule(self, trained_steps: int) -> torch.Tensor:
        """Per-step clips [K'] (DPPO): exponential from clip_first to clip; K' = 1 gives
        [clip] (the public code divides 0 by 0 there)."""
        if self.ratio != "per_step" or self.clip_first is None:
            return torch.full((trained_steps,), self.clip, dtype=torch.float64)
        if trained_steps == 1:
            return torch.tensor([self.clip], dtype=torch.float64)
        rate = 3.0  # DPPO's schedule sharpness
        frac = torch.arange(trained_steps, dtype=torch.float64) / (trained_steps - 1)
        rise = (torch.exp(rate * frac) - 1) / (math.exp(rate) - 1)
        return self.clip_first + (self.clip - self.clip_first) * rise

    def ratio_rule(self, trained_steps: int) -> DecisionRatio | StepRatio:
        if self.ratio == "per_step":
            return StepRatio(self.clip_schedule(trained_steps), self.denoising_discount,
                             self.dual_clip)
        return DecisionRatio(self.clip, self.dual_clip)


class ChainPPO:
    """PPO over the decisions of a chain policy in batched envs.

    `policy` is the trainable policy, already set up by the algorithm file (stochastic
    sampler, noise head, frozen prefix, residual...); `bc_reference` is the frozen base for
    the optional BC regulariser (ChainPPOConfig.bc_coef).
    """

    def __init__(self, policy: Any, task: str, config: PPOConfig, run_dir: str | Path,
                 task_options: dict | None = None, bc_reference: Any = None) -> None:
        self.cfg, self.task, self.task_options = config, task, task_options or {}
        self.policy = policy.eval()  # no augmentation or dropout: rollout and update agree
        bc_coef = getattr(config, "bc_coef", 0.0)
        base = bc_reference.eval() if (bc_reference is not None and bc_coef > 0) else None
        self.critic = ValueMLP(self.policy.feature_dim)
        if config.float64:
            self.policy.double()
            self.critic.double()
            if base is not None:
                base.double()
        c = self.policy.config
        self.env = make_env(task, num_envs=config.num_envs, cameras=tuple(c.cameras),
                            image_size=c.image_size, **self.task_options)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.collector = Collector(self.env, self.policy, self.generator, config.reward_scale)
        self.env_steps = 0
        # Steps that enter the ratio: the last K' of the chain (DPPO) or all of them.
        self.first_trained = c.frozen_steps
        k = self.policy.num_chain_steps
        finetune_steps = getattr(config, "finetune_steps", None)
        if finetune_steps is not None and finetune_steps != k - self.first_trained:
            raise ConfigError(f"finetune_steps={finetune_steps} needs a policy built with "
                              f"{k - finetune_steps} frozen steps (algo=dppo does that)")
        self.ppo = PPOUpdate(self.policy, self.critic, config, self.generator,
                             self.first_trained, base, bc_coef)
        self.reward_norm = (ReturnNormalizer(config.num_envs, config.gamma)
                            if config.normalize_rewards else None)
        self.trainer = Trainer(self, task, config, run_dir, self.task_options)
        self.state_path = self.trainer.state_path

    # --- what the trainer drives --------------------------------------------------------
    @property
    def iteration(self) -> int:
        return self.trainer.iteration

    def train(self, progress: bool = True) -> dict[str, Any]:
        return self.trainer.train(progress)

    def resume(self) -> bool:
        return self.trainer.resume()

    def restart(self, iteration: int) -> None:
        """Fresh episodes at checkpoint boundaries (seeded by the iteration, so a resumed run
        is bit-identical) and after evaluations; partial returns of the cut episodes leave
        the reward normaliser."""
        self.collector.reset(seed=self.cfg.seed + iteration)
        if self.reward_norm is not None:
            self.reward_norm.returns.zero_()

    def iterate(self, iteration: int) -> dict[str, float]:
        rollout, stats = self.collect(iteration)
        t0 = time.perf_counter()
        metrics = self.ppo(rollout, iteration)
        return {**stats, **metrics, "seconds_update": time.perf_counter() - t0}

    def update(self, rollout: Rollout) -> dict[str, float]:
        return self.ppo(rollout, self.iteration)

    def _bc_loss(self, obs, chain) -> torch.Tensor:
        return self.ppo._bc_loss(obs, chain)

    # --- rollout ------------------------------------------------------------------------
    def _values(self, *batches: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Critic values of observation batches shaped [T_i, N, To, ...], in one call."""
        sizes = [next(iter(b.values())).shape[0] for b in batches]
        joined = {k: torch.cat([b[k] for b in batches]).flatten(0, 1) for k in batches[0]}
        with torch.no_grad():
            values = self.critic(self.policy.encode(joined)).to(self.policy.dtype)
        return list(values.view(sum(sizes), -1).split(sizes))

    def _reset_groups(self, iteration: int) -> None:
        """grpo: env i starts from initial state number i // group_size of this iteration."""
        cfg = self.cfg
        first = (cfg.seed * 1_000_003 + iteration) * cfg.num_envs
        for i in range(cfg.num_envs):
            obs = self.env.reset(seed=first + i // cfg.group_size, env_ids=torch.tensor([i]))
        self.collector.restart(obs)
        if self.reward_norm is not None:
            self.reward_norm.returns.zero_()

    @torch.no_grad()
    def collect(self, iteration: int | None = None) -> tuple[Rollout, dict[str, float]]:
        cfg, collector = self.cfg, self.collector
        iteration = self.iteration if iteration is None else iteration
        if not collector.started:
            self.restart(iteration)
        n, ta = cfg.num_envs, self.policy.config.n_action_steps
        grpo = cfg.advantage == "grpo"
        decisions = cfg.decisions_per_iteration
        if grpo:  # whole episodes from shared initial states
            self._reset_groups(iteration)
            decisions = -(-self.env.max_episode_steps // ta)
            in_episode = torch.ones(n, dtype=torch.bool)
            episode_returns = torch.zeros(n, dtype=self.policy.dtype)
        rows: dict[str, list] = {k: [] for k in ("obs", "states", "log_probs", "sde", "final_obs",
                                                 "rewards", "terminated", "truncated",
                                                 "valid")}
        collector.reset_counters()
        for _ in range(decisions):
            d = collector.decision()
            self.env_steps += n * ta
            reward = d.reward
            if self.reward_norm is not None:
                reward = self.reward_norm(reward, d.terminated | d.truncated).to(reward.dtype)
            ended = d.terminated | d.truncated
            if grpo:
                rows["valid"].append(in_episode.clone())
                counted = ended & in_episode
                episode_returns = torch.where(
                    counted, d.episode_return.to(episode_returns.dtype) * cfg.reward_scale,
                    episode_returns)
                in_episode &= ~ended
            rows["obs"].append(d.obs)
            rows["states"].append(d.chain.states)
            rows["log_probs"].append(d.chain.log_probs)
            rows["sde"].append(d.chain.sde_step)
            rows["final_obs"].append(d.final_obs)
            rows["rewards"].append(reward)
            rows["terminated"].append(d.terminated)
            rows["truncated"].append(d.truncated)
        t0 = time.perf_counter()
        stack = lambda obs: {k: torch.stack([o[k] for o in obs]) for k in obs[0]}  # noqa: E731
        obs = stack(rows["obs"])
        # Values of every decision, of the observation after the last one, and of the final
        # observations (truncation bootstraps from them), in one batched critic call.
        values, following, final_values = self._values(
            obs, {k: v[None] for k, v in collector.history.get().items()},
            stack(rows["final_obs"]))
        terminated, truncated = torch.stack(rows["terminated"]), torch.stack(rows["truncated"])
        following = torch.cat([values[1:], following])
        next_values = torch.where(truncated, final_values, following)
        next_values = torch.where(terminated, torch.zeros_like(next_values), next_values)
        value_seconds = time.perf_counter() - t0
        rollout = Rollout(
            obs=obs, states=torch.stack(rows["states"]), log_probs=torch.stack(rows["log_probs"]),
            sde_step=None if rows["sde"][0] is None else torch.stack(rows["sde"]),
            values=values, rewards=torch.stack(rows["rewards"]), next_values=next_values,
            episode_end=terminated | truncated,
            valid=torch.stack(rows["valid"]) if grpo else None,
            episode_returns=episode_returns if grpo else None)
        stats = {**collector.stats.summary(), "seconds_sim": collector.seconds["sim"],
                 "seconds_policy": collector.seconds["policy"] + value_seconds}
        return rollout, stats

    # --- checkpoint state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                **self.ppo.state_dict(), "generator": self.generator.get_state(),
                "reward_norm": None if self.reward_norm is None
                else self.reward_norm.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.ppo.load_state_dict(state)
        self.generator.set_state(state["generator"])
        if self.reward_norm is not None and state.get("reward_norm") is not None:
            self.reward_norm.load_state_dict(state["reward_norm"])
        self.collector.started = False  # the trainer restarts episodes at the checkpoint
