"""The PPO update, shared by every on-policy algorithm (ReinFlow, Flow-Noise, Flow-SDE,
DPPO, ResiP, GRPO, Gaussian PPO). The math lives in `algos/common.py`.

Shapes: T decisions per env per iteration, N envs, M = T*N decisions, K denoising steps
(K' trained), To history, Tp predicted steps, Da action dims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from embodied.algos.common import (
    approx_kl,
    clipped_surrogate,
    explained_variance,
    gae,
    group_advantages,
    value_loss,
)
from embodied.algos.trainer import TrainerConfig
from embodied.core.errors import ConfigError, EmbodiedError
from embodied.policies.samplers import Chain

Obs = dict[str, torch.Tensor]


class TrainingDiverged(EmbodiedError):
    """A check that must hold during training failed; the last checkpoint is intact."""


@dataclass
class PPOConfig(TrainerConfig):
    decisions_per_iteration: int = 16
    """Policy calls per env per iteration (grpo: enough for one whole episode instead)."""
    gamma: float = 0.99
    """Discount per decision (chunk)."""
    lam: float = 0.95
    advantage: str = "gae"
    """gae (with a critic) or grpo: every iteration, groups of `group_size` envs start from
    the same initial state and run one whole episode; each decision of an episode gets
    (R - group mean) / (group std + 1e-6) of its episode return R (no critic)."""
    group_size: int = 8
    clip: float = 0.01
    dual_clip: float | None = None
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
    critic_detach_features: bool = True
    """The critic reads the policy's encoder features; detached, its loss never moves the
    policy's encoder (set false to let the value loss shape an image encoder too)."""
    target_kl: float | None = None
    max_grad_norm: float = 1.0
    normalize_advantages: bool = True
    reward_scale: float = 1.0
    normalize_rewards: bool = False
    """Divide rewards by the running std of the discounted return: use it for dense
    rewards of arbitrary scale (locomotion); sparse 0/1 success rewards need none."""
    critic_warmup_iterations: int = 0
    float64: bool = False
    """Run policy and critic in float64: the first-minibatch ratio is then 1 to ~1e-12
    instead of float32 reduction-order noise (~1e-5 for 64-dim, 8-step chains)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("decisions_per_iteration", "epochs", "minibatch_size", "group_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("critic_warmup_iterations", "actor_lr", "critic_lr", "entropy_coef",
                     "max_grad_norm"):
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
        if self.advantage == "grpo" and (self.group_size < 2
                                         or self.num_envs % self.group_size):
            raise ConfigError(f"grpo needs group_size >= 2 dividing num_envs={self.num_envs}, "
                              f"got {self.group_size}")

    def lr_factor(self, schedule: str, iteration: int) -> float:
        """Multiplier of the initial learning rate at `iteration`."""
        progress = min(iteration / max(self.iterations - 1, 1), 1.0)
        shape = {"constant": 0.0, "linear": progress,
                 "cosine": 0.5 * (1 - math.cos(math.pi * progress))}[schedule]
        return 1.0 - (1.0 - self.lr_final_fraction) * shape

    def ratio_rule(self, trained_steps: int) -> DecisionRatio | StepRatio:
        """One ratio per decision (the default); chain algorithms may choose per step."""
        return DecisionRatio(self.clip, self.dual_clip)


@dataclass
class DecisionRatio:
    """One ratio per decision from the joint log-likelihood of the trained steps
    (ReinFlow, pi_RL; a Gaussian or residual policy's single step)."""

    clip: float
    dual_clip: float | None = None

    def loss(self, new_lp, old_lp, adv) -> tuple[torch.Tensor, torch.Tensor, Any]:
        log_ratio = (new_lp - old_lp).sum(-1)
        return clipped_surrogate(log_ratio, adv, self.clip, self.dual_clip), log_ratio, self.clip


@dataclass
class StepRatio:
    """One PPO term per trained denoising step (DPPO): step k's advantage scaled by
    discount^(K'-1-k), its own clip."""

    clips: torch.Tensor  # [K']
    discount: float = 1.0
    dual_clip: float | None = None

    def loss(self, new_lp, old_lp, adv) -> tuple[torch.Tensor, torch.Tensor, Any]:
        k = new_lp.shape[1]
        discount = self.discount ** torch.arange(k - 1, -1, -1, dtype=new_lp.dtype)
        clips = self.clips.to(new_lp.dtype)
        log_ratio = new_lp - old_lp
        loss = clipped_surrogate(log_ratio, adv[:, None] * discount, clips, self.dual_clip)
        return loss, log_ratio, clips


@dataclass
class Rollout:
    """Decisions of one iteration ([T, N, ...]); `flat()` gives [M, ...] minibatch sources."""

    obs: Obs                     # [T, N, To, ...] histories (images uint8)
    states: torch.Tensor         # [T, N, K+1, Tp, Da]
    log_probs: torch.Tensor      # [T, N, K]
    sde_step: torch.Tensor | None
    values: torch.Tensor         # [T, N]
    rewards: torch.Tensor        # [T, N]
    next_values: torch.Tensor    # [T, N]
    episode_end: torch.Tensor    # [T, N]
    valid: torch.Tensor | None = None           # [T, N] grpo: decision inside the episode
    episode_returns: torch.Tensor | None = None  # [N] grpo: each env's episode return


def index_obs(obs: Obs, idx: torch.Tensor) -> Obs:
    return {k: v[idx] for k, v in obs.items()}


class PPOUpdate:
    """Clipped-surrogate policy loss, value loss, entropy bonus and optional BC regulariser
    over epochs of minibatches; checks that the first minibatch's ratio is exactly 1."""

    def __init__(self, policy: Any, critic: torch.nn.Module, config: PPOConfig,
                 generator: torch.Generator, first_trained: int = 0,
                 bc_reference: Any = None, bc_coef: float = 0.0) -> None:
        self.policy, self.critic, self.cfg = policy, critic, config
        self.generator = generator
        self.first_trained = first_trained
        self.ratio = config.ratio_rule(policy.num_chain_steps - first_trained)
        self.bc_reference = bc_reference if bc_coef > 0 else None
        self.bc_coef = bc_coef
        actor_params = [p for p in policy.parameters() if p.requires_grad]
        self.actor_opt = torch.optim.Adam(actor_params, lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(critic.parameters(), lr=config.critic_lr)

    def advantages(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if cfg.advantage == "grpo":
            # Every decision of an env's episode shares its group-relative episode return.
            groups = torch.arange(ro.rewards.shape[1]) // cfg.group_size
            adv = group_advantages(ro.episode_returns, groups)
            return adv.expand_as(ro.rewards), ro.episode_returns.expand_as(ro.rewards)
        return gae(ro.rewards, ro.values, ro.next_values, ro.episode_end, cfg.gamma, cfg.lam)


    def __call__(self, ro: Rollout, iteration: int) -> dict[str, float]:
        cfg = self.cfg
        adv, returns = self.advantages(ro)
        flat = lambda x: x.flatten(0, 1)  # noqa: E731 - [T, N, ...] -> [M, ...]
        obs = {k: flat(v) for k, v in ro.obs.items()}
        states, stored_lp = flat(ro.states), flat(ro.log_probs)
        sde = None if ro.sde_step is None else flat(ro.sde_step)
        adv, returns, old_values = flat(adv), flat(returns), flat(ro.values)
        if ro.valid is not None:  # grpo: only decisions inside the episode train
            keep = flat(ro.valid).nonzero().flatten()
            obs, states, stored_lp = index_obs(obs, keep), states[keep], stored_lp[keep]
            sde = None if sde is None else sde[keep]
            adv, returns, old_values = adv[keep], returns[keep], old_values[keep]
        old_lp = stored_lp[:, self.first_trained:]  # from the rollout itself, never recomputed
        if cfg.normalize_advantages and cfg.advantage == "gae":  # grpo's are normalised
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        all_chains = Chain(states, stored_lp, sde)
        total = len(adv)
        metrics: dict[str, list[float]] = {}
        first = True
        update_actor = iteration >= cfg.critic_warmup_iterations
        for opt, lr, schedule in ((self.actor_opt, cfg.actor_lr, cfg.actor_lr_schedule),
                                  (self.critic_opt, cfg.critic_lr, cfg.critic_lr_schedule)):
            for group in opt.param_groups:
                group["lr"] = lr * cfg.lr_factor(schedule, iteration)
        for _epoch in range(cfg.epochs):
            order = torch.randperm(total, generator=self.generator)
            kls = []
            for start in range(0, total, cfg.minibatch_size):
                idx = order[start:start + cfg.minibatch_size]
                mb_obs, chain = index_obs(obs, idx), all_chains.index(idx)
                # One encoder pass per minibatch, shared by the policy terms and the critic.
                cond = self.policy.encode(mb_obs)
                new_lp, log_std = self.policy.score_steps(mb_obs, chain, self.first_trained,
                                                          cond=cond)
                policy_loss, log_ratio, clip = self.ratio.loss(new_lp, old_lp[idx], adv[idx])
                if first:
                    self._check_first_ratio(log_ratio)
                    first = False
                entropy = log_std.mean()  # + a constant: the Gaussian entropy per dim
                loss = (policy_loss - cfg.entropy_coef * entropy
                        + self._bc_loss(mb_obs, chain))
                values = self.critic(cond.detach() if cfg.critic_detach_features else cond)
                v_loss = value_loss(values, returns[idx], old_values[idx], cfg.value_clip,
                                    1.0 if cfg.value_loss == "huber" else None)
                if not (torch.isfinite(loss) and torch.isfinite(v_loss)):
                    raise TrainingDiverged(f"loss is not finite at iteration {iteration}; "
                                           "the last checkpoint is kept (lower the actor lr?)")
                self.actor_opt.zero_grad(set_to_none=True)
                self.critic_opt.zero_grad(set_to_none=True)
                (loss * update_actor + v_loss).backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                if update_actor:
                    self.actor_opt.step()
                self.critic_opt.step()
                detached = log_ratio.detach()
                kl = approx_kl(detached).item()
                kls.append(kl)
                row = {"policy_loss": policy_loss.item(), "value_loss": v_loss.item(),
                       "approx_kl": kl, "entropy_log_std": entropy.item(),
                       "clip_fraction": ((detached.exp() - 1).abs() > clip).float().mean().item(),
                       "log_ratio_abs": detached.abs().mean().item()}
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

    def _bc_loss(self, obs: Obs, chain: Chain) -> torch.Tensor:
        if self.bc_reference is None:
            return torch.zeros(())
        # Deterministic chains of both policies from the same x_0 (DPPO's frozen steps too);
        # the reference runs the fine-tuned policy's own sampler and K.
        x0 = chain.states[:, 0]
        mine = self.policy.sample(obs, deterministic=True, x0=x0)[1].action
        with torch.no_grad():
            ref = self.bc_reference.sample(obs, deterministic=True, x0=x0)[1].action
        return self.bc_coef * (mine - ref).square().mean()

    def state_dict(self) -> dict[str, Any]:
        return {"actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
