"""The off-policy core: one learner for SAC, TD3 and DSRL (`OffPolicyLearner`), the
shared config (`OffPolicyConfig`), collection stand-ins and the tripwires' error. The
algorithm files (`sac.py`, `td3.py`, `dsrl.py`) hold their configs and actors and name this
learner as their LEARNER.

UTD, our definition: `utd` critic gradient steps per vector env step (one step of all N envs,
N transitions), each on a batch of `batch_size`; the actor (and SAC's temperature) steps once
every `actor_every` critic steps. With N = 16 and utd = 1 that is 1/16 update per
transition: raise utd (or lower N) for more reuse.

Tripwires stop training with an error (the last checkpoint stays the run's state): a
non-finite loss, or a mean |Q| beyond `q_divergence` times the largest discounted return the
rewards seen so far (at least 1) and the entropy term allow. `steps_per_iteration`,
`warmup_steps` and `utd` count vector env steps also when a transition is a whole chunk
(DSRL: Ta of them per decision).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embodied.algos.critics import EnsembleQ, polyak_update, redq_target
from embodied.algos.trainer import Trainer, TrainerConfig
from embodied.core.errors import ConfigError, EmbodiedError
from embodied.data.replay import ReplayBuffer
from embodied.envs import make_env
from embodied.policies.policy import ChunkPolicy
from embodied.policies.samplers import Chain
from embodied.rollout import Collector


class TrainingError(EmbodiedError):
    """Training diverged (NaN or exploding values); the last checkpoint is kept."""


@dataclass
class OffPolicyConfig(TrainerConfig):
    """What every off-policy algorithm here shares (replay, critics, UTD, tripwires)."""

    num_envs: int = 16
    iterations: int = 200
    steps_per_iteration: int = 50
    """Vector env steps (every env steps once) per iteration."""
    buffer_size: int = 1_000_000
    batch_size: int = 256
    gamma: float = 0.99
    n_step: int = 1
    tau: float = 0.005
    num_critics: int = 2
    critic_subset: int = 2
    """REDQ: the target is the min over this many randomly drawn heads (2 of 2: clipped
    double Q)."""
    hidden: int = 256
    utd: float = 1.0
    """Critic gradient steps per vector env step (see the module docstring)."""
    actor_every: int = 1
    warmup_steps: int = 50
    """Vector env steps of uniform random actions before the first update."""
    actor_lr: float = 3.0e-4
    critic_lr: float = 3.0e-4
    max_grad_norm: float | None = 10.0
    q_divergence: float = 10.0
    reward_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.utd > 0:
            raise ConfigError(f"utd must be > 0 (critic steps per vector env step), got "
                              f"{self.utd}")
        for name in ("steps_per_iteration", "batch_size", "n_step", "num_critics",
                     "critic_subset", "hidden", "actor_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.critic_subset > self.num_critics:
            raise ConfigError(f"critic_subset={self.critic_subset} > num_critics="
                              f"{self.num_critics}")
        if not 0 < self.tau <= 1 or not 0 < self.gamma <= 1:
            raise ConfigError("need 0 < tau <= 1 and 0 < gamma <= 1")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


class _Behaviour:
    """A collection-time stand-in for the policy (the collector's policy interface):
    `pick(obs)` gives the actor's output a in [-1, 1] (warm-up: uniform; TD3: the
    deterministic action plus noise), the policy turns it into executed actions (DSRL: the
    base's chunk from the noise), and a goes on in the chain for the replay."""

    def __init__(self, policy: Any, pick: Callable[[Any], torch.Tensor]) -> None:
        self.policy, self.pick = policy, pick
        self.config, self.dtype = policy.config, policy.dtype

    def reset(self, num_envs: int) -> None:
        self.policy.reset(num_envs)

    def end_episodes(self, ended: torch.Tensor) -> None:
        self.policy.end_episodes(ended)

    def sample(self, obs, generator=None, deterministic=False):
        a = self.pick(obs)
        if hasattr(self.policy, "chunk_from"):  # DSRL
            chunk = self.policy.chunk_from(obs, a)
        else:
            c = self.config
            chunk = self.policy.to_env_actions(a.view(-1, c.horizon, c.action_dim))
        return chunk, Chain(torch.stack([torch.zeros_like(a), a], 1), a.new_zeros(a.shape[0], 1))


class OffPolicyLearner:
    """The off-policy learner the Trainer drives (restart / iterate / state_dict): SAC's
    actor loss, or TD3's (config.actor == "td3": a deterministic actor, target policy
    smoothing, exploration noise, no temperature)."""

    def __init__(self, policy: ChunkPolicy, task: str, config: OffPolicyConfig, run_dir: str | Path,
                 task_options: dict | None = None, bc_reference: Any = None) -> None:
        self.cfg, self.task, self.task_options = config, task, task_options or {}
        self.policy = policy.eval()
        c = policy.config
        self.env = make_env(task, num_envs=config.num_envs, cameras=tuple(c.cameras),
                            image_size=c.image_size, **self.task_options)
        self.generator = torch.Generator().manual_seed(config.seed)
        # Raw rewards from the collector; reward_scale applies once, in the target.
        self.collector = Collector(self.env, self.policy, self.generator, 1.0)
        # "step": a transition per env step (Ta = 1 actors); "decision": one per policy call
        # (DSRL: the action is the noise of a whole chunk, the reward the chunk's sum).
        self.decisions = getattr(config, "transitions", "step") == "decision"
        action_dim = (c.horizon * c.action_dim) if self.decisions else c.action_dim
        self.uniform = _Behaviour(policy, lambda obs: torch.rand(
            (next(iter(obs.values())).shape[0], action_dim), generator=self.generator) * 2 - 1)
        history = (c.n_obs_steps,) if self.decisions else ()  # decisions store histories
        spec = {"state": ((*history, c.obs_dim), torch.float32)}
        spec.update({f"rgb_{cam}": ((*history, c.image_size, c.image_size, 3), torch.uint8)
                     for cam in c.cameras})
        self.replay = ReplayBuffer(max(config.buffer_size, 2 * config.num_envs),
                                   config.num_envs, spec, action_dim,
                                   1 if self.decisions else c.n_obs_steps)
        # Discount per replay row: gamma^Ta for a chunk (its reward is the Ta steps' sum).
        self.gamma = config.gamma ** (c.n_action_steps if self.decisions else 1)
        self.critic = EnsembleQ(policy.feature_dim, action_dim, config.num_critics,
                                config.hidden)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.action_dim = action_dim  # |A| of what the actor outputs (DSRL: the noise)
        self.td3 = getattr(config, "actor", "sac") == "td3"
        if self.td3:
            if self.decisions:
                raise ConfigError("TD3 acts per env step (its actor outputs one action)")
            self.target_policy = copy.deepcopy(policy).requires_grad_(False)
            self.explore = _Behaviour(policy, lambda obs: (
                policy.squashed_mean(obs) + config.explore_std * torch.randn(
                    (next(iter(obs.values())).shape[0], action_dim), generator=self.generator)
            ).clamp(-1.0, 1.0))
            self.log_alpha = None  # no temperature: TD3 has no entropy term
        else:
            self.log_alpha = nn.Parameter(torch.tensor(float(config.init_alpha)).log())
            self.target_entropy = (-float(action_dim) if config.target_entropy is None
                                   else float(config.target_entropy))
            self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.env_steps = 0
        self.vector_steps = 0
        self.updates = 0
        self._debt = 0.0
        self._max_abs_reward = 0.0
        self.run_dir = Path(run_dir)
        self._manifests: list[dict] = []
        self.trainer = Trainer(self, task, config, run_dir, self.task_options)
        self.state_path = self.trainer.state_path

    # --- what the trainer drives --------------------------------------------------------
    def train(self, progress: bool = True) -> dict[str, Any]:
        return self.trainer.train(progress)

    def resume(self) -> bool:
        return self.trainer.resume()

    def restart(self, iteration: int) -> None:
        """Fresh episodes (seeded by the iteration); the cut episodes' last steps get no
        next observation in the replay."""
        self.replay.cut_episodes()
        self.collector.reset(seed=self.cfg.seed + iteration)

    def iterate(self, iteration: int) -> dict[str, float]:
        cfg = self.cfg
        self.collector.reset_counters()
        update_seconds, losses = 0.0, []
        if not self.collector.started:  # a fresh or resumed learner: seeded, cut episodes
            self.restart(iteration)
        taken = 0
        while taken < cfg.steps_per_iteration:  # vector env steps (a chunk is Ta of them)
            warm = self.vector_steps < cfg.warmup_steps
            self.collector.policy = self.uniform if warm else (
                self.explore if self.td3 else self.policy)
            with torch.no_grad():
                decision = self.collector.decision(keep_steps=not self.decisions)
            executed = decision.chunk.shape[1]
            if self.decisions:
                self.replay.add(decision.obs, decision.chain.states[:, 1].flatten(1),
                                decision.reward, decision.terminated, decision.truncated,
                                decision.final_obs)
                rewards = decision.reward
                self.env_steps += cfg.num_envs * decision.chunk.shape[1]
            else:
                for step in decision.steps:
                    self.replay.add_step(step)
                rewards = torch.stack([step.reward for step in decision.steps])
                self.env_steps += cfg.num_envs * len(decision.steps)
            self._max_abs_reward = max(self._max_abs_reward,
                                       float(rewards.abs().max()) * cfg.reward_scale)
            self.vector_steps += executed
            taken += executed
            if warm or self.replay.count < 2:  # (a sample needs a step with a next obs)
                continue
            self._debt += cfg.utd * executed
            t0 = time.perf_counter()
            while self._debt >= 1.0:
                self._debt -= 1.0
                losses.append(self.update())
            update_seconds += time.perf_counter() - t0
        self.collector.policy = self.policy
        metrics = {**self.collector.stats.summary(),
                   "seconds_sim": self.collector.seconds["sim"],
                   "seconds_policy": self.collector.seconds["policy"],
                   "seconds_update": update_seconds, "updates": self.updates}
        if self.log_alpha is not None:
            metrics["alpha"] = float(self.log_alpha.detach().exp())
        for key in {k for m in losses for k in m}:  # actor terms: only on actor steps
            values = [m[key] for m in losses if key in m]
            metrics[key] = sum(values) / len(values)
        return metrics

    # --- the update -----------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        cfg = self.cfg
        batch = self.replay.sample(cfg.batch_size, cfg.n_step, self.gamma, self.generator)
        if self.decisions:  # rows hold whole histories: [B, 1, To, ...] -> [B, To, ...]
            batch.obs = {k: v[:, -1] for k, v in batch.obs.items()}
            batch.next_obs = {k: v[:, -1] for k, v in batch.next_obs.items()}
        alpha = None if self.td3 else self.log_alpha.exp().detach()
        with torch.no_grad():
            next_feats = self.policy.encode(batch.next_obs)
            if self.td3:  # target policy smoothing: clipped noise on the target action
                next_a = self.target_policy.squashed_mean(batch.next_obs)
                noise = (cfg.target_noise * torch.randn(next_a.shape, generator=self.generator)
                         ).clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
                next_a = (next_a + noise).clamp(-1.0, 1.0)
            else:
                next_a, next_logp = self.policy.rsample_squashed(batch.next_obs, next_feats,
                                                                 self.generator)
            next_q = redq_target(self.target(next_feats, self._env_action(next_a)),
                                 cfg.critic_subset, self.generator)
            if not self.td3 and cfg.backup_entropy:
                next_q = next_q - alpha * next_logp
            target = batch.reward * cfg.reward_scale + batch.discount * next_q
            feats = self.policy.encode(batch.obs)
        q = self.critic(feats, batch.action)
        critic_loss = (q - target).square().mean()
        self._check(critic_loss, "critic loss")
        self._step(self.critic_opt, critic_loss, self.critic)
        # What |Q| can reach: rewards (at least one unit, so sparse tasks before their first
        # success and a fresh critic's outputs never trip it) plus, with the entropy backup,
        # alpha |log pi| (<= 5 per dim) per step, over the horizon 1 / (1 - gamma).
        entropy = (5.0 * float(alpha) * self.action_dim
                   if not self.td3 and cfg.backup_entropy else 0.0)
        bound = cfg.q_divergence * (max(self._max_abs_reward, 1.0) + entropy) / (
            1 - self.gamma + 1e-8)
        q_mean = float(q.detach().abs().mean())
        if q_mean > bound:
            raise TrainingError(
                f"Q values diverged: mean |Q| = {q_mean:.3g} beyond {bound:.3g} "
                f"({cfg.q_divergence} x (max(max|r|, 1) + entropy term) / (1 - gamma)) after "
                f"{self.updates} updates; "
                "the last checkpoint is kept: lower critic_lr or utd, or raise tau's "
                "smoothing (smaller tau)")
        self.updates += 1
        out = {"critic_loss": float(critic_loss.detach()),
               "q_mean": float(q.detach().mean())}
        if self.updates % cfg.actor_every == 0 and self.td3:  # delayed deterministic actor
            q_pi = self.critic(self.policy.encode(batch.obs).detach(),
                               self._env_action(self.policy.squashed_mean(batch.obs))).mean(0)
            actor_loss = -q_pi.mean()
            self._check(actor_loss, "actor loss")
            self._step(self.actor_opt, actor_loss, self.policy)
            polyak_update(self.target_policy, self.policy, cfg.tau)
            out.update(actor_loss=float(actor_loss.detach()))
        elif self.updates % cfg.actor_every == 0:
            a, logp = self.policy.rsample_squashed(batch.obs, None, self.generator)
            q_pi = self.critic(self.policy.encode(batch.obs).detach(),
                               self._env_action(a)).mean(0)
            actor_loss = (alpha * logp - q_pi).mean()
            self._check(actor_loss, "actor loss")
            self._step(self.actor_opt, actor_loss, self.policy)
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
            out.update(actor_loss=float(actor_loss.detach()),
                       entropy=float(-logp.detach().mean()))
        polyak_update(self.target, self.critic, cfg.tau)
        return out

    def _env_action(self, a: torch.Tensor) -> torch.Tensor:
        """The critic's action input for the actor's output a (the executed action; DSRL:
        the noise itself)."""
        if hasattr(self.policy, "critic_action"):
            return self.policy.critic_action(a)
        c = self.policy.config
        return self.policy.to_env_actions(a.view(-1, c.horizon, c.action_dim))[:, 0]

    def _step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(module.parameters(), self.cfg.max_grad_norm)
        opt.step()

    def _check(self, loss: torch.Tensor, what: str) -> None:
        if not torch.isfinite(loss):
            raise TrainingError(f"the {what} is {float(loss.detach())} after {self.updates} "
                                "updates; the last checkpoint is kept: check the rewards and "
                                "observations for NaN/inf, or lower the learning rates")

    # --- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        replay_dir = self.run_dir / "replay"
        manifest = self.replay.save(replay_dir)
        # The previous manifest was committed with the previous checkpoint: files neither it
        # nor this one names are from saves that never committed.
        keep = [*self._manifests[-1:], manifest]
        for path in replay_dir.glob("*_g*.pt"):
            if not any(path.name in (*m["pieces"].values(), m["final"]) for m in keep):
                path.unlink(missing_ok=True)
        self._manifests = keep
        extra = ({"target_policy": self.target_policy.state_dict()} if self.td3 else
                 {"log_alpha": self.log_alpha.detach(), "alpha_opt": self.alpha_opt.state_dict()})
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "target": self.target.state_dict(), **extra,
                "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(),
                "generator": self.generator.get_state(), "replay": manifest,
                "vector_steps": self.vector_steps, "updates": self.updates,
                "debt": self._debt, "max_abs_reward": self._max_abs_reward}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["target"])
        if self.td3:
            self.target_policy.load_state_dict(state["target_policy"])
        else:
            with torch.no_grad():
                self.log_alpha.copy_(state["log_alpha"])
            self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.generator.set_state(state["generator"])
        self.replay.load(self.run_dir / "replay", state["replay"])
        self._manifests = [state["replay"]]
        self.vector_steps, self.updates = state["vector_steps"], state["updates"]
        self._debt, self._max_abs_reward = state["debt"], state["max_abs_reward"]


