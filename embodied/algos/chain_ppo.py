"""One PPO core for chain policies, shared by every on-policy fine-tuning algorithm.

The algorithm files (reinflow, flow_noise, flow_sde, dppo, resip, gaussian_ppo) set up the
trainable policy and the config; the core does the rest. A policy here is anything with
`sample(obs, generator) -> (chunk, Chain)`, `score_steps(obs, chain, first)`, `encode`,
`feature_dim`, `num_chain_steps`, `reset(num_envs)` and `end_episodes(mask)`: a ChunkPolicy
(flow / diffusion chains, or a Gaussian as a one-step chain) or a ResidualPolicy.

Shapes: N envs, T decisions per env per iteration, Ta executed actions per decision,
K denoising steps, Tp predicted steps, Da action dims, Do obs dims.

One decision = one policy call = one chunk of Ta env steps. Its reward is the sum of the
rewards of the executed steps; GAE runs over decisions. If an env's episode ends inside a
chunk, the decision ends the episode (terminated, or truncated with the final observation's
value bootstrapped); the leftover actions of that chunk still step the env's next episode
(the batch steps together) but count for no decision.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from embodied.algos.common import (
    ReturnNormalizer,
    approx_kl,
    clipped_surrogate,
    explained_variance,
    gae,
    group_advantages,
    value_loss,
)
from embodied.core.checkpoint import load_training_state, truncate_metrics
from embodied.core.errors import ConfigError, EmbodiedError
from embodied.core.io import atomic_write
from embodied.core.progress import Progress
from embodied.core.runlog import RunLogger, plot_curve
from embodied.envs import make_env
from embodied.policies.nets import ValueMLP
from embodied.policies.samplers import Chain


class TrainingDiverged(EmbodiedError):
    """A check that must hold during training failed; the last checkpoint is intact."""


@dataclass
class ChainPPOConfig:
    sampler: str = "learned_noise"
    """Stochastic sampler for rollouts and ratios: learned_noise (ReinFlow, Flow-Noise),
    sde / sde_hybrid (Flow-SDE), ddpm / ddim (diffusion chains)."""
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    num_steps: int | None = None
    """Denoising steps K for fine-tuning (None: the base policy's)."""
    num_envs: int = 64
    decisions_per_iteration: int = 16
    """Policy calls per env per iteration (grpo: enough for one whole episode instead)."""
    iterations: int = 100
    gamma: float = 0.99
    """Discount per decision (chunk)."""
    lam: float = 0.95
    advantage: str = "gae"
    """gae (with a critic) or grpo: every iteration, groups of `group_size` envs start from
    the same initial state and run one whole episode; each decision of an episode gets
    (R - group mean) / (group std + 1e-6) of its episode return R (no critic)."""
    group_size: int = 8
    clip: float = 0.01
    """PPO clip (the last fine-tuned step's, with ratio=per_step and clip_first)."""
    dual_clip: float | None = None
    ratio: str = "chain"
    """chain: one ratio per decision from the joint log-likelihood of the trained steps
    (ReinFlow, pi_RL); per_step: one PPO term per denoising step (DPPO)."""
    finetune_steps: int | None = None
    """DPPO's K': train only the last K' denoising steps; the first K - K' run a frozen copy
    of the base (None: all steps train)."""
    denoising_discount: float = 1.0
    """per_step: denoising step k's advantage is scaled by discount^(K'-1-k) (DPPO 0.99)."""
    clip_first: float | None = None
    """per_step: the first fine-tuned step's clip; it rises exponentially to `clip` at the
    last step (DPPO 1e-3 -> 1e-2). None: `clip` at every step."""
    entropy_coef: float = 0.0
    """Bonus on the per-step Gaussian entropy (mean log-std; only learned noise moves it)."""
    epochs: int = 5
    minibatch_size: int = 256
    actor_lr: float = 4.5e-5
    critic_lr: float = 6.5e-4
    actor_lr_schedule: str = "constant"
    """constant, linear or cosine from the lr at iteration 0 to lr * lr_final_fraction at
    the last iteration (set from the iteration each time, so resuming keeps it exact)."""
    critic_lr_schedule: str = "constant"
    lr_final_fraction: float = 0.1
    value_loss: str = "mse"
    value_clip: float | None = None
    bc_coef: float = 0.0
    """Weight of MSE between deterministic actions of base and fine-tuned policy (same x0)."""
    target_kl: float | None = None
    max_grad_norm: float = 1.0
    normalize_advantages: bool = True
    reward_scale: float = 1.0
    normalize_rewards: bool = False
    """Divide rewards by the running std of the discounted return: use it for dense
    rewards of arbitrary scale (locomotion); sparse 0/1 success rewards need none."""
    critic_warmup_iterations: int = 0
    eval_every: int = 10
    eval_episodes: int = 100
    checkpoint_every: int = 10
    seed: int = 0
    video: bool = True
    float64: bool = False
    """Run policy and critic in float64: the first-minibatch ratio is then 1 to ~1e-12
    instead of float32 reduction-order noise (~1e-5 for 64-dim, 8-step chains)."""

    def __post_init__(self) -> None:
        for name in ("num_envs", "decisions_per_iteration", "epochs", "minibatch_size",
                     "eval_episodes", "group_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("iterations", "eval_every", "critic_warmup_iterations", "actor_lr",
                     "critic_lr", "entropy_coef", "bc_coef", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"need 0 < gamma <= 1 and 0 <= lam <= 1, got gamma={self.gamma}, "
                              f"lam={self.lam}")
        if self.clip <= 0:
            raise ConfigError(f"clip must be > 0, got {self.clip}")
        if self.advantage not in ("gae", "grpo"):
            raise ConfigError(f"advantage must be gae or grpo, got {self.advantage!r}")
        if self.value_loss not in ("mse", "huber"):
            raise ConfigError(f"value_loss must be mse or huber, got {self.value_loss!r}")
        for schedule in (self.actor_lr_schedule, self.critic_lr_schedule):
            if schedule not in ("constant", "linear", "cosine"):
                raise ConfigError(f"lr schedules are constant, linear or cosine, got {schedule!r}")
        if self.ratio not in ("chain", "per_step"):
            raise ConfigError(f"ratio must be chain or per_step, got {self.ratio!r}")
        if self.finetune_steps is not None and self.finetune_steps < 1:
            raise ConfigError(f"finetune_steps (K') must be >= 1, got {self.finetune_steps}")
        if self.advantage == "grpo" and (self.group_size < 2
                                         or self.num_envs % self.group_size):
            raise ConfigError(f"grpo needs group_size >= 2 dividing num_envs={self.num_envs}, "
                              f"got {self.group_size}")
        if self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every must be >= 1 (iterations between checkpoints)")

    def lr_factor(self, schedule: str, iteration: int) -> float:
        """Multiplier of the initial learning rate at `iteration`."""
        progress = min(iteration / max(self.iterations - 1, 1), 1.0)
        shape = {"constant": 0.0, "linear": progress,
                 "cosine": 0.5 * (1 - math.cos(math.pi * progress))}[schedule]
        return 1.0 - (1.0 - self.lr_final_fraction) * shape

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


@dataclass
class Rollout:
    """Decisions of one iteration, flattened to [T*N, ...] by `flat()`."""

    obs: torch.Tensor            # [T, N, Do]
    states: torch.Tensor         # [T, N, K+1, Tp, Da]
    log_probs: torch.Tensor      # [T, N, K]
    sde_step: torch.Tensor | None
    values: torch.Tensor         # [T, N]
    rewards: torch.Tensor        # [T, N]
    next_values: torch.Tensor    # [T, N]
    episode_end: torch.Tensor    # [T, N]
    valid: torch.Tensor | None = None           # [T, N] grpo: decision inside the episode
    episode_returns: torch.Tensor | None = None  # [N] grpo: each env's episode return


class ChainPPO:
    """PPO over decisions of a chain policy in batched envs.

    `policy` is the trainable policy, already set up by the algorithm file (stochastic
    sampler, noise head, frozen prefix, residual...); `bc_reference` is the frozen base for
    the optional BC regulariser. Policies may keep per-env state (ResiP's base queue): the
    loop calls `policy.reset(num_envs)` at every env reset and `policy.end_episodes(mask)`
    after every env step.
    """

    def __init__(self, policy: Any, task: str, config: ChainPPOConfig, run_dir: str | Path,
                 task_options: dict | None = None, bc_reference: Any = None) -> None:
        self.cfg, self.task, self.task_options = config, task, task_options or {}
        self.run_dir = Path(run_dir)
        self.policy = policy.eval()  # no augmentation or dropout: rollout and update agree
        self.base = bc_reference.eval() if (bc_reference is not None
                                            and config.bc_coef > 0) else None
        self.critic = ValueMLP(self.policy.feature_dim)
        if config.float64:
            self.policy.double()
            self.critic.double()
            if self.base is not None:
                self.base.double()
        actor_params = [p for p in self.policy.parameters() if p.requires_grad]
        self.actor_opt = torch.optim.Adam(actor_params, lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.env = make_env(task, num_envs=config.num_envs, **self.task_options)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.iteration = 0
        self.env_steps = 0
        self.before: dict[str, Any] | None = None
        # Steps that enter the ratio: the last K' of the chain (DPPO) or all of them.
        self.first_trained = self.policy.config.frozen_steps
        k = self.policy.num_chain_steps
        if config.finetune_steps is not None and config.finetune_steps != k - self.first_trained:
            raise ConfigError(f"finetune_steps={config.finetune_steps} needs a policy built with "
                              f"{k - config.finetune_steps} frozen steps (algo=dppo does that)")
        self.clips = config.clip_schedule(self.policy.num_chain_steps - self.first_trained)
        self.state_path = self.run_dir / "checkpoints" / "train_state.pt"
        self._obs: dict[str, torch.Tensor] = {}
        self._purge_step: int | None = None  # TensorBoard drops events from here on resume
        self.reward_norm = (ReturnNormalizer(config.num_envs, config.gamma)
                            if config.normalize_rewards else None)

    def _reset_envs(self) -> None:
        """Fresh episodes at every checkpoint boundary, seeded by the iteration, so that a
        run resumed from a checkpoint is bit-identical to one never interrupted."""
        self._obs = self.env.reset(seed=self.cfg.seed + self.iteration)
        self.policy.reset(self.cfg.num_envs)

    # --- rollout ------------------------------------------------------------------------
    def _value(self, obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.critic(self.policy.encode(obs)).to(self.policy.dtype)

    def _reset_groups(self) -> None:
        """grpo: env i starts from initial state number i // group_size of this iteration."""
        first = (self.cfg.seed * 1_000_003 + self.iteration) * self.cfg.num_envs
        for i in range(self.cfg.num_envs):
            self._obs = self.env.reset(seed=first + i // self.cfg.group_size,
                                       env_ids=torch.tensor([i]))
        self.policy.reset(self.cfg.num_envs)

    @torch.no_grad()
    def collect(self) -> tuple[Rollout, dict[str, float]]:
        cfg, env, policy = self.cfg, self.env, self.policy
        if not self._obs:
            self._reset_envs()
        n, ta = cfg.num_envs, policy.config.n_action_steps
        grpo = cfg.advantage == "grpo"
        decisions = cfg.decisions_per_iteration
        if grpo:  # whole episodes from shared initial states
            self._reset_groups()
            decisions = -(-env.max_episode_steps // ta)
            in_episode = torch.ones(n, dtype=torch.bool)
            episode_returns = torch.zeros(n, dtype=self.policy.dtype)
        rows: dict[str, list] = {k: [] for k in
                                 ("obs", "states", "log_probs", "sde", "values", "rewards",
                                  "terminated", "truncated", "final_values", "valid")}
        returns, successes = [], []
        timing = {"policy": 0.0, "sim": 0.0}
        for _ in range(decisions):
            if grpo:
                rows["valid"].append(in_episode.clone())
            t0 = time.perf_counter()
            obs = self._obs["state"]
            chunk, chain = policy.sample(obs, generator=self.generator)
            rows["obs"].append(obs)
            rows["states"].append(chain.states)
            rows["log_probs"].append(chain.log_probs)
            rows["sde"].append(chain.sde_step)
            rows["values"].append(self._value(obs))
            reward = torch.zeros(n, dtype=self.policy.dtype)
            alive = torch.ones(n, dtype=torch.bool)
            terminated = torch.zeros(n, dtype=torch.bool)
            truncated = torch.zeros(n, dtype=torch.bool)
            final_obs = torch.zeros_like(obs)
            t1 = time.perf_counter()
            for j in range(ta):
                self._obs, r, term, trunc, info = env.step(chunk[:, j])
                self.env_steps += n
                reward += r * alive * cfg.reward_scale
                ended = (term | trunc) & alive
                if ended.any():
                    terminated |= term & alive
                    truncated |= trunc & alive
                    final_obs[ended] = info["final_obs"]["state"][ended].to(final_obs.dtype)
                    counted = ended & in_episode if grpo else ended
                    returns += info["episode_return"][counted].tolist()
                    successes += info["episode_success"][counted].tolist()
                    if grpo:
                        episode_returns[counted] = info["episode_return"][counted].to(
                            episode_returns.dtype) * cfg.reward_scale
                    alive &= ~ended
                    policy.end_episodes(term | trunc)
            t2 = time.perf_counter()
            if self.reward_norm is not None:
                reward = self.reward_norm(reward, terminated | truncated).to(reward.dtype)
            rows["rewards"].append(reward)
            rows["terminated"].append(terminated)
            rows["truncated"].append(truncated)
            rows["final_values"].append(self._value(final_obs))
            timing["policy"] += (t1 - t0) + (time.perf_counter() - t2)
            timing["sim"] += t2 - t1
            if grpo:
                in_episode &= ~(terminated | truncated)
        values = torch.stack(rows["values"])
        final_values = torch.stack(rows["final_values"])
        terminated, truncated = torch.stack(rows["terminated"]), torch.stack(rows["truncated"])
        following = torch.cat([values[1:], self._value(self._obs["state"])[None]])
        next_values = torch.where(truncated, final_values, following)
        next_values = torch.where(terminated, torch.zeros_like(next_values), next_values)
        rollout = Rollout(
            obs=torch.stack(rows["obs"]), states=torch.stack(rows["states"]),
            log_probs=torch.stack(rows["log_probs"]),
            sde_step=None if rows["sde"][0] is None else torch.stack(rows["sde"]),
            values=values, rewards=torch.stack(rows["rewards"]), next_values=next_values,
            episode_end=terminated | truncated,
            valid=torch.stack(rows["valid"]) if grpo else None,
            episode_returns=episode_returns if grpo else None)
        stats = {"episodes": len(returns), "seconds_sim": timing["sim"],
                 "seconds_policy": timing["policy"]}
        if returns:
            stats.update(train_return=sum(returns) / len(returns),
                         train_success=sum(successes) / len(successes))
        return rollout, stats

    # --- update -------------------------------------------------------------------------
    def advantages(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.advantage == "grpo":
            # Every decision of an env's episode shares its group-relative episode return.
            groups = torch.arange(self.cfg.num_envs) // self.cfg.group_size
            adv = group_advantages(ro.episode_returns, groups)
            return adv.expand_as(ro.rewards), ro.episode_returns.expand_as(ro.rewards)
        return gae(ro.rewards, ro.values, ro.next_values, ro.episode_end,
                   self.cfg.gamma, self.cfg.lam)

    def _policy_terms(self, obs, chain, old_lp, adv):
        """(policy loss, log ratio, per-step log-std) of a minibatch; ratio per decision
        (chain) or per trained denoising step (DPPO)."""
        cfg = self.cfg
        new_lp, log_std = self.policy.score_steps(obs, chain, self.first_trained)
        clips = self.clips.to(new_lp.dtype)
        if cfg.ratio == "chain":
            log_ratio = (new_lp - old_lp).sum(-1)
            loss = clipped_surrogate(log_ratio, adv, cfg.clip, cfg.dual_clip)
        else:
            k = new_lp.shape[1]
            discount = cfg.denoising_discount ** torch.arange(k - 1, -1, -1, dtype=new_lp.dtype)
            log_ratio = new_lp - old_lp
            loss = clipped_surrogate(log_ratio, adv[:, None] * discount, clips, cfg.dual_clip)
        return loss, log_ratio, log_std

    def update(self, ro: Rollout) -> dict[str, float]:
        cfg = self.cfg
        adv, returns = self.advantages(ro)
        flat = lambda x: x.flatten(0, 1)  # noqa: E731 - [T, N, ...] -> [T*N, ...]
        obs, states, stored_lp = flat(ro.obs), flat(ro.states), flat(ro.log_probs)
        sde = None if ro.sde_step is None else flat(ro.sde_step)
        adv, returns, old_values = flat(adv), flat(returns), flat(ro.values)
        if ro.valid is not None:  # grpo: only decisions inside the episode train
            keep = flat(ro.valid)
            obs, states, stored_lp = obs[keep], states[keep], stored_lp[keep]
            sde = None if sde is None else sde[keep]
            adv, returns, old_values = adv[keep], returns[keep], old_values[keep]
        old_lp = stored_lp[:, self.first_trained:]  # from the rollout itself, never recomputed
        if cfg.normalize_advantages and cfg.advantage == "gae":  # grpo's are normalised
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        all_chains = Chain(states, stored_lp, sde)
        total = obs.shape[0]
        metrics: dict[str, list[float]] = {}
        first = True
        update_actor = self.iteration >= cfg.critic_warmup_iterations
        for opt, lr, schedule in ((self.actor_opt, cfg.actor_lr, cfg.actor_lr_schedule),
                                  (self.critic_opt, cfg.critic_lr, cfg.critic_lr_schedule)):
            for group in opt.param_groups:
                group["lr"] = lr * cfg.lr_factor(schedule, self.iteration)
        clip = self.clips.to(old_lp.dtype)
        for _epoch in range(cfg.epochs):
            order = torch.randperm(total, generator=self.generator)
            kls = []
            for start in range(0, total, cfg.minibatch_size):
                idx = order[start:start + cfg.minibatch_size]
                chain = all_chains.index(idx)
                policy_loss, log_ratio, log_std = self._policy_terms(
                    obs[idx], chain, old_lp[idx], adv[idx])
                if first:
                    self._check_first_ratio(log_ratio)
                    first = False
                entropy = log_std.mean()  # + a constant: the Gaussian entropy per dim
                loss = (policy_loss - cfg.entropy_coef * entropy
                        + self._bc_loss(obs[idx], chain))
                values = self.critic(self.policy.encode(obs[idx]).detach())
                v_loss = value_loss(values, returns[idx], old_values[idx], cfg.value_clip,
                                    1.0 if cfg.value_loss == "huber" else None)
                if not (torch.isfinite(loss) and torch.isfinite(v_loss)):
                    raise TrainingDiverged(f"loss is not finite at iteration {self.iteration}; "
                                           "the last checkpoint is kept (lower the actor lr?)")
                self.actor_opt.zero_grad(set_to_none=True)
                self.critic_opt.zero_grad(set_to_none=True)
                (loss * update_actor + v_loss).backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                if update_actor:
                    self.actor_opt.step()
                self.critic_opt.step()
                lr_detached = log_ratio.detach()
                kl = approx_kl(lr_detached).item()
                kls.append(kl)
                row = {"policy_loss": policy_loss.item(), "value_loss": v_loss.item(),
                       "approx_kl": kl, "entropy_log_std": entropy.item(),
                       "clip_fraction": ((lr_detached.exp() - 1).abs() > (
                           clip if cfg.ratio == "per_step" else cfg.clip)).float().mean().item(),
                       "log_ratio_abs": lr_detached.abs().mean().item()}
                for k, std in enumerate(log_std.detach().exp().mean(0).tolist()):
                    row[f"noise_std/step{self.first_trained + k}"] = std
                for key, value in row.items():
                    metrics.setdefault(key, []).append(value)
            if cfg.target_kl is not None and sum(kls) / len(kls) > cfg.target_kl:
                break  # KL early stop
        out = {k: sum(v) / len(v) for k, v in metrics.items()}
        out["explained_variance"] = explained_variance(old_values, returns)
        chain_lp = old_lp.sum(-1)
        out["log_prob_min"] = chain_lp.min().item()
        out["log_prob_max"] = chain_lp.max().item()
        return out

    def _check_first_ratio(self, log_ratio: torch.Tensor) -> None:
        if not torch.isfinite(log_ratio).all():
            raise TrainingDiverged("non-finite log-probabilities in the first minibatch")
        worst = log_ratio.abs().max().item()
        tolerance = 1e-9 if self.cfg.float64 else 1e-4  # float32: reduction-order noise
        if worst > tolerance:
            raise TrainingDiverged(
                f"PPO ratio is not 1 on the first minibatch (max |log ratio| = {worst:.2e}): "
                "rollout and update score the chain differently (sampler settings, dropout, "
                "augmentation, or a changed time grid); nothing was updated")

    def _bc_loss(self, obs: torch.Tensor, chain: Chain) -> torch.Tensor:
        if self.base is None or self.cfg.bc_coef == 0:
            return torch.zeros(())
        # Deterministic chains of both policies from the same x_0 (DPPO's frozen steps too).
        x0 = chain.states[:, 0]
        mine = self.policy.sample(obs, deterministic=True, x0=x0)[1].action
        with torch.no_grad():
            ref = self.base.sample(obs, deterministic=True, x0=x0)[1].action
        return self.cfg.bc_coef * (mine - ref).square().mean()

    # --- loop ---------------------------------------------------------------------------
    def train(self, progress: bool = True) -> dict[str, Any]:
        from embodied.rollout import evaluate

        logger = RunLogger(self.run_dir, purge_step=self._purge_step)
        start = time.time()
        timing = {"sim": 0.0, "policy": 0.0, "update": 0.0}
        bar = Progress(self.cfg.iterations, initial=self.iteration, desc="finetune",
                       unit="iterations", enabled=progress)
        try:
            while self.iteration < self.cfg.iterations:
                if self.cfg.eval_every and self.iteration % self.cfg.eval_every == 0:
                    result = self.evaluate(evaluate)
                    self.before = self.before or result
                    logger.log(self.env_steps, success_rate=result["success_rate"],
                               return_mean=result["return_mean"], iteration=self.iteration)
                    bar.write(f"iteration {self.iteration}: success "
                              f"{result['success_rate']:.2f} (env steps {self.env_steps})")
                if self.iteration % self.cfg.checkpoint_every == 0:
                    self._reset_envs()
                rollout, stats = self.collect()
                t0 = time.perf_counter()
                metrics = self.update(rollout)
                timing["update"] += time.perf_counter() - t0
                timing["sim"] += stats["seconds_sim"]
                timing["policy"] += stats["seconds_policy"]
                self.iteration += 1
                logger.log(self.env_steps, iteration=self.iteration, **stats, **metrics)
                bar.update(1)
                bar.set_postfix(success=f"{stats.get('train_success', float('nan')):.2f}",
                                kl=f"{metrics['approx_kl']:.1e}")
                if self.iteration % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        after = self.evaluate(evaluate)
        logger.log(self.env_steps, success_rate=after["success_rate"],
                   return_mean=after["return_mean"], iteration=self.iteration)
        logger.close()
        self.save_checkpoint()
        curve = plot_curve(self.run_dir, "success_rate", title=f"fine-tuning on {self.task}",
                           xlabel="env steps")
        before = self.before
        return {"task": self.task, "iterations": self.iteration, "env_steps": self.env_steps,
                "success_before": before["success_rate"] if before else None,
                "success_after": after["success_rate"], "episodes": after["episodes"],
                "seconds": round(time.time() - start, 1),
                **{f"seconds_{k}": round(v, 1) for k, v in timing.items()},
                "curve": str(curve) if curve else None, "policy": str(self.run_dir / "policy"),
                "video": after.get("video")}

    def evaluate(self, evaluate_fn) -> dict[str, Any]:
        video = (self.run_dir / "videos" / f"iter{self.iteration:05d}.mp4"
                 if self.cfg.video else None)
        result = evaluate_fn(self.policy, self.task, self.cfg.eval_episodes, seed=10_000,
                             task_options=self.task_options, video_path=video)
        if video is not None:
            result["video"] = str(video)
        self._obs = {}  # evaluation shares the policy's per-env state: restart the rollout
        return result

    def save_checkpoint(self) -> None:
        """Policy directory + the whole training state, each written atomically; the
        metrics file's length is recorded so a resumed run drops rows logged after it."""
        self.policy.save_pretrained(self.run_dir / "policy")
        metrics = self.run_dir / "metrics.jsonl"
        state = {"iteration": self.iteration, "env_steps": self.env_steps,
                 "policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                 "actor_opt": self.actor_opt.state_dict(),
                 "critic_opt": self.critic_opt.state_dict(),
                 "generator": self.generator.get_state(), "before": self.before,
                 "reward_norm": None if self.reward_norm is None
                 else self.reward_norm.state_dict(),
                 "metrics_bytes": metrics.stat().st_size if metrics.exists() else 0,
                 "config": asdict(self.cfg)}
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))

    def resume(self) -> bool:
        """Load the last checkpoint of this run directory, if any (True if loaded), and drop
        the metric rows logged after it."""
        if not self.state_path.exists():
            return False
        state = load_training_state(self.state_path)
        try:
            self.policy.load_state_dict(state["policy"])
            self.critic.load_state_dict(state["critic"])
            self.actor_opt.load_state_dict(state["actor_opt"])
            self.critic_opt.load_state_dict(state["critic_opt"])
            self.generator.set_state(state["generator"])
            if self.reward_norm is not None and state.get("reward_norm") is not None:
                self.reward_norm.load_state_dict(state["reward_norm"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ConfigError(f"{self.state_path} does not fit this run's algorithm and policy "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]}): resume "
                              "with the settings it was made with, or pass another "
                              "run_dir=...") from None
        self.iteration, self.env_steps = state["iteration"], state["env_steps"]
        self.before = state["before"]
        truncate_metrics(self.run_dir, state["metrics_bytes"])
        self._purge_step = self.env_steps
        self._obs = {}
        return True
