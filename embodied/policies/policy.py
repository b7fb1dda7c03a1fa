"""Chunked generative policies: an observation encoder, a denoiser net and a sampler.

Shapes: B batch, To obs history, Do obs dims, Tp predicted steps, Ta executed steps,
Da action dims, C conditioning features, K denoising steps.

    policy = ChunkPolicy(PolicyConfig(kind="flow", obs_dim=26, action_dim=4, horizon=8))
    policy.fit_normalizers(dataset.stats)             # statistics travel with the weights
    loss = policy.bc_loss(obs, actions)               # obs {"state": [B,To,Do]}, [B,Tp,Da]
    chunk = policy.act(obs, generator=g)              # [B, Ta, Da] in the env's [-1, 1]
    chunk, chain = policy.sample(obs, generator=g)    # RL: the whole denoising chain
    step_log_probs = policy.log_prob(obs, chain)      # [B, K], recomputed by the same sampler
    policy.save_pretrained("runs/x/policy"); ChunkPolicy.from_pretrained("runs/x/policy")
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from embodied.core.checkpoint import load_weights
from embodied.core.errors import ConfigError
from embodied.core.io import atomic_directory
from embodied.policies.config import PolicyConfig
from embodied.policies.encoders import MultiModalEncoder, StateEncoder
from embodied.policies.nets import GaussianMLP, NoiseHead, build_denoiser
from embodied.policies.normalize import Normalizer
from embodied.policies.samplers import (
    Chain,
    DiffusionSampler,
    FlowSampler,
    flow_training_pair,
    gaussian_log_prob,
)

Obs = dict[str, torch.Tensor]
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_VERSION = 1


class ChunkPolicy(nn.Module):
    """Flow, shortcut, diffusion or Gaussian action-chunk policy (composition, no subclassing)."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = c = config
        self.obs_normalizer = Normalizer(c.obs_dim, "mean_std")
        self.action_normalizer = Normalizer(c.action_dim, "min_max")
        if c.cameras:
            self.encoder: nn.Module = MultiModalEncoder(
                c.obs_dim, c.n_obs_steps, list(c.cameras), c.image_size,
                state_hidden=c.encoder_hidden)
        else:
            self.encoder = StateEncoder(c.obs_dim, c.n_obs_steps, hidden=c.encoder_hidden,
                                        out_dim=c.encoder_out_dim)
        cond_dim = self.encoder.out_dim
        self.denoiser: nn.Module | None = None
        self.gaussian: nn.Module | None = None
        self.noise_head: nn.Module | None = None
        if c.kind == "gaussian":
            self.gaussian = GaussianMLP(cond_dim, c.horizon * c.action_dim,
                                        **(c.net_kwargs if c.squash else {}))
            self.sampler = None
            return
        # Flow times in [0, 1] are scaled up for the sinusoidal embedding; diffusion
        # timesteps are already integers in [0, num_train_steps).
        net_kwargs = {"time_scale": 1.0 if c.kind == "diffusion" else 1000.0, **c.net_kwargs}
        self.denoiser = build_denoiser(c.net, horizon=c.horizon, action_dim=c.action_dim,
                                       cond_dim=cond_dim, step_embedding=c.kind == "shortcut",
                                       **net_kwargs)
        if c.noise_head:
            self.noise_head = NoiseHead(c.horizon, c.action_dim, cond_dim)
        self.frozen: nn.ModuleDict | None = None
        if c.frozen_steps:  # DPPO's prefix: encoder, denoiser and noise head, all frozen
            frozen = {"encoder": self.encoder, "denoiser": self.denoiser}
            if self.noise_head is not None:
                frozen["noise_head"] = self.noise_head
            self.frozen = nn.ModuleDict({k: copy.deepcopy(v) for k, v in frozen.items()})
            self.frozen.requires_grad_(False)
        self.sampler = self.build_sampler(c.sampler, c.num_steps, **c.sampler_kwargs)

    def build_sampler(self, mode: str, num_steps: int, **kwargs: Any):
        """A sampler for this policy (fine-tuning swaps ODE for a stochastic one)."""
        if self.config.kind == "diffusion":
            return DiffusionSampler(num_train_steps=self.config.num_train_steps,
                                    num_steps=num_steps, mode=mode, **kwargs)
        return FlowSampler(num_steps, mode=mode, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """float32 normally; `policy.double()` makes chains float64 (exact PPO ratios)."""
        return self.obs_normalizer.shift.dtype

    # --- conditioning -------------------------------------------------------------------
    def encode(self, obs: Obs | torch.Tensor) -> torch.Tensor:
        """Normalised observation history -> conditioning [B, C]."""
        return self.encoder(self._normalized_state(obs))

    def _normalized_state(self, obs: Obs | torch.Tensor) -> Obs | torch.Tensor:
        """The encoder's input: the normalised state history (with the images, if any)."""
        obs = self._as_history(obs)
        state = self.obs_normalizer.normalize(obs["state"].to(self.dtype))
        return {**obs, "state": state} if self.config.cameras else state

    def _as_history(self, obs: Obs | torch.Tensor) -> Obs:
        if isinstance(obs, torch.Tensor):
            obs = {"state": obs}
        state = obs["state"]
        if state.dim() == 2:  # [B, Do]: a single frame; repeat it as the history
            obs = {k: v.unsqueeze(1).expand(-1, self.config.n_obs_steps, *v.shape[1:])
                   for k, v in obs.items()}
        if obs["state"].shape[1:] != (self.config.n_obs_steps, self.config.obs_dim):
            raise ValueError(
                f"obs['state'] must be [B, To={self.config.n_obs_steps}, "
                f"Do={self.config.obs_dim}] (or [B, Do]), got {tuple(state.shape)}")
        return obs

    def _fns(self, cond: torch.Tensor, denoiser: nn.Module | None = None,
             noise_head: nn.Module | None = None):
        shortcut = self.config.kind == "shortcut"
        step = 1.0 / self.config.num_steps
        denoiser = self.denoiser if denoiser is None else denoiser
        noise_head = self.noise_head if noise_head is None else noise_head

        def denoise_fn(x, t, d=None):
            if shortcut:
                d = torch.full_like(t, step) if d is None else d
            return denoiser(x, t, cond, d if shortcut else None)

        noise_fn = None
        if noise_head is not None:
            def noise_fn(x, t):
                return noise_head(x, t, cond)
        return denoise_fn, noise_fn

    @property
    def feature_dim(self) -> int:
        """Width of `encode(obs)`: the critic's input."""
        return self.encoder.out_dim

    @property
    def num_chain_steps(self) -> int:
        """Transitions per stored chain: K (a Gaussian policy is a one-step chain)."""
        return 1 if self.sampler is None else self.sampler.num_steps

    # --- acting -------------------------------------------------------------------------
    def reset(self, num_envs: int) -> None:
        """New batch of envs. This policy keeps no per-env state (a residual policy does)."""

    def end_episodes(self, ended: torch.Tensor) -> None:
        """Envs whose episode ended ([N] bool); no per-env state to clear here."""

    @torch.no_grad()
    def act(self, obs: Obs | torch.Tensor, generator: torch.Generator | None = None,
            deterministic: bool = True) -> torch.Tensor:
        """The next Ta actions [B, Ta, Da] in the env's action space (clipped to [-1, 1]).

        Flow/diffusion: the initial noise is drawn from `generator` (same seed, same
        actions); deterministic=True runs noise-free transitions (ODE / DDIM eta=0 mean).
        """
        return self.sample(obs, generator=generator, deterministic=deterministic)[0]

    def sample(self, obs: Obs | torch.Tensor, generator: torch.Generator | None = None,
               deterministic: bool = False,
               x0: torch.Tensor | None = None) -> tuple[torch.Tensor, Chain]:
        """(executed chunk [B, Ta, Da] in env space, the denoising chain in policy space).

        x0: the chain's initial noise (default: drawn from `generator`)."""
        cond = self.encode(obs)
        shape = (cond.shape[0], self.config.horizon, self.config.action_dim)
        if self.sampler is None:  # gaussian: a one-step chain (states [0, x]) for PPO
            mean, log_std = self.gaussian(cond)
            x = mean if deterministic else (
                mean + log_std.exp() * torch.randn(mean.shape, generator=generator,
                                                   dtype=mean.dtype))
            if self.config.squash:  # SAC: tanh of the draw; trained through rsample_squashed
                squashed = torch.tanh(x).view(shape)
                chain = Chain(torch.stack([torch.zeros_like(squashed), squashed], 1),
                              squashed.new_zeros(shape[0], 1))
                return self.to_env_actions(squashed), chain
            lp = mean.new_zeros(shape[0]) if deterministic else gaussian_log_prob(
                x, mean, log_std.exp())
            x = x.view(shape)
            chain = Chain(torch.stack([torch.zeros_like(x), x], 1), lp[:, None])
            return self.to_env_actions(x), chain
        denoise_fn, noise_fn = self._fns(cond)
        prefix_fns = None
        if self.frozen is not None:
            frozen = self.frozen
            prefix_fns = self._fns(frozen["encoder"](self._normalized_state(obs)),
                                   frozen["denoiser"], frozen["noise_head"]
                                   if "noise_head" in frozen else None)
        chain = self.sampler.sample(denoise_fn, noise_fn, shape, generator=generator,
                                    deterministic=deterministic, x0=x0, dtype=self.dtype,
                                    prefix_fns=prefix_fns, prefix_steps=self.config.frozen_steps)
        return self.to_env_actions(chain.action), chain

    def log_prob(self, obs: Obs | torch.Tensor, chain: Chain, first: int = 0) -> torch.Tensor:
        """Per-transition log-densities [B, K - first] of a stored chain (steps first..K-1),
        with the current weights."""
        return self.score_steps(obs, chain, first)[0]

    def score_steps(self, obs: Obs | torch.Tensor, chain: Chain, first: int = 0,
                    cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-densities, mean log-std) [B, K - first] of steps first..K-1 of a stored chain;
        the log-std is the per-step exploration noise (entropy bonus, diagnostics).
        `cond`: `encode(obs)` if the caller has it already (the PPO update shares it with
        the critic, so an image encoder runs once per minibatch)."""
        cond = self.encode(obs) if cond is None else cond
        if self.sampler is None:
            if self.config.squash:
                raise ConfigError("a squashed Gaussian policy is SAC's actor: PPO cannot score "
                                  "its chains (use rsample_squashed)")
            mean, log_std = self.gaussian(cond)
            x = chain.states[:, 1].flatten(1)
            return (gaussian_log_prob(x, mean, log_std.exp())[:, None],
                    log_std.mean(1, keepdim=True))
        denoise_fn, noise_fn = self._fns(cond)
        return self.sampler.score_steps(denoise_fn, noise_fn, chain, first)

    def squashed_mean(self, obs: Obs | torch.Tensor, cond: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """TD3: the deterministic action tanh(mean) [B, Tp*Da] in policy space, with grad."""
        if not self.config.squash:
            raise ConfigError("squashed_mean needs a gaussian policy with squash=True")
        return torch.tanh(self.gaussian(self.encode(obs) if cond is None else cond)[0])

    def rsample_squashed(self, obs: Obs | torch.Tensor, cond: torch.Tensor | None = None,
                         generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAC: (a = tanh(u) [B, Tp*Da] in policy space, log pi(a) [B]) with u drawn by
        reparameterisation, so gradients flow through the draw; log pi includes the tanh
        change of variables, log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))."""
        if not self.config.squash:
            raise ConfigError("rsample_squashed needs a gaussian policy with squash=True")
        mean, log_std = self.gaussian(self.encode(obs) if cond is None else cond)
        std = log_std.exp()
        u = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        log_prob = gaussian_log_prob(u, mean, std) - (
            2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), log_prob

    def to_env_actions(self, x: torch.Tensor) -> torch.Tensor:
        """Policy-space chunk [B, Tp, Da] -> executed env actions [B, Ta, Da] in [-1, 1].

        The chain is scored unclipped; clipping here is the env's action bound, applied
        after the chain (documented, so the log-likelihood is of what the sampler drew).
        """
        actions = self.action_normalizer.unnormalize(x[:, : self.config.n_action_steps])
        return actions.clamp(-1.0, 1.0).float()

    # --- behaviour cloning --------------------------------------------------------------
    def bc_loss(self, obs: Obs | torch.Tensor, actions: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Imitation loss on env-space actions [B, Tp, Da]."""
        cond = self.encode(obs)
        target = self.action_normalizer.normalize(actions.float())
        kind = self.config.kind
        if kind == "gaussian":
            mean, log_std = self.gaussian(cond)
            dist = torch.distributions.Normal(mean, log_std.exp())
            return -dist.log_prob(target.flatten(1)).sum(-1).mean()
        noise = torch.randn(target.shape, generator=generator)
        if kind == "diffusion":
            steps = torch.randint(0, self.config.num_train_steps, (target.shape[0],),
                                  generator=generator)
            x_noisy, eps = self.sampler.training_target(target, noise, steps)
            return (self.denoiser(x_noisy, steps.float(), cond, None) - eps).square().mean()
        t = torch.rand(target.shape[0], generator=generator)
        x_t, velocity = flow_training_pair(target, noise, t)
        if kind == "flow":
            return (self.denoiser(x_t, t, cond, None) - velocity).square().mean()
        return self._shortcut_loss(x_t, t, velocity, cond, generator)

    def _shortcut_loss(self, x_t, t, velocity, cond, generator) -> torch.Tensor:
        """Flow loss at d=0 plus self-consistency v(x,t,2d) = (v(x,t,d) + v(x',t+d,d)) / 2."""
        batch = x_t.shape[0]
        n_sc = max(1, int(batch * self.config.shortcut_self_consistency))
        flow_pred = self.denoiser(x_t[n_sc:], t[n_sc:], cond[n_sc:], torch.zeros_like(t[n_sc:]))
        flow_loss = (flow_pred - velocity[n_sc:]).square().mean()
        levels = int(math.log2(self.config.shortcut_max_steps))
        # 2d in {1, 1/2, ..., 2/M}; t on the grid of d so that t + 2d <= 1.
        level = torch.randint(0, levels, (n_sc,), generator=generator)
        d = 0.5 ** (level.float() + 1)
        t_sc = shortcut_start_times(d, generator)
        x0 = torch.randn(x_t[:n_sc].shape, generator=generator)
        a = x_t[:n_sc] + (1 - t[:n_sc, None, None]) * velocity[:n_sc]  # the clean action
        x_sc = (1 - t_sc[:, None, None]) * x0 + t_sc[:, None, None] * a
        c = cond[:n_sc]
        with torch.no_grad():
            v1 = self.denoiser(x_sc, t_sc, c, d)
            v2 = self.denoiser(x_sc + d[:, None, None] * v1, t_sc + d, c, d)
            target = (v1 + v2) / 2
        sc_loss = (self.denoiser(x_sc, t_sc, c, 2 * d) - target).square().mean()
        return flow_loss + sc_loss

    # --- statistics and checkpoints -----------------------------------------------------
    def fit_normalizers(self, stats: dict[str, dict[str, Any]],
                        obs_key: str = "observation.state", action_key: str = "action") -> None:
        self.obs_normalizer.fit(stats[obs_key])
        self.action_normalizer.fit(stats[action_key])

    def save_pretrained(self, path: str | Path) -> Path:
        """config.json + model.safetensors, swapped in as a whole directory (atomic)."""
        def fill(tmp: Path) -> None:
            meta = {"format_version": FORMAT_VERSION, "policy": self.config.to_dict()}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))

        return atomic_directory(path, fill)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> ChunkPolicy:
        """Rebuild a saved policy; `overrides` change config fields (e.g. sampler)."""
        path = Path(path)
        config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not config_file.exists() or not weights_file.exists():
            raise ConfigError(f"{path} is not a policy checkpoint: it needs {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE} (made by save_pretrained / embodied pretrain)")
        try:
            meta = json.loads(config_file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config_file} is not valid JSON ({e})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{path}: checkpoint format {meta.get('format_version')}, this "
                              f"version reads {FORMAT_VERSION}")
        try:
            return cls._build_with(meta["policy"], load_weights(weights_file), overrides)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def with_overrides(self, **overrides: Any) -> ChunkPolicy:
        """A new policy with config fields changed (e.g. a stochastic sampler and a fresh
        noise head for RL) and these weights."""
        return self._build_with(self.config.to_dict(), self.state_dict(), overrides)

    @classmethod
    def _build_with(cls, fields: dict[str, Any], state: dict[str, torch.Tensor],
                    overrides: dict[str, Any]) -> ChunkPolicy:
        config = PolicyConfig.from_dict({**fields, **overrides})
        policy = cls(config)
        try:
            missing, unexpected = policy.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ConfigError(f"weights do not fit the config ({e})") from None
        if config.noise_head and not fields.get("noise_head"):
            missing = [k for k in missing if not k.startswith("noise_head.")]  # fresh head
        if config.frozen_steps and not fields.get("frozen_steps"):
            # DPPO from a plain checkpoint: the frozen prefix starts as the base's weights
            # (and as the fresh noise head, whose frozen copy then never trains).
            policy.frozen.load_state_dict({
                f"{part}.{k}": v for part in policy.frozen.keys()
                for k, v in getattr(policy, part).state_dict().items()})
            missing = [k for k in missing if not k.startswith("frozen.")]
        if missing or unexpected:
            raise ConfigError(f"weights do not fit the config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
        return policy.eval()


def shortcut_start_times(d: torch.Tensor, generator: torch.Generator | None = None):
    """Uniform t on the grid of step size d [B] with room for a double step: t = j d,
    j in {0, ..., 1/d - 2} (so t + 2d <= 1)."""
    slots = (1.0 / d).round() - 1
    return (torch.rand(d.shape, generator=generator) * slots).floor() * d
