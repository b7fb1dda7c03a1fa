"""A frozen chunk policy plus a per-step Gaussian residual (ResiP, arXiv 2407.16677).

Each env step: the base's next action a_base (from that env's own chunk queue), then
    u ~ N(mu_phi(x), sigma^2),  x = [clip(norm(obs), +-3), a_base],  a = a_base + scale * u.
The residual's last layer starts at zero, so the policy starts as the base. The base queue
is per environment and restarts on that environment's episode end (the public code shares
one queue across envs). For PPO the decision is one step, stored as a one-step "chain":
states [B, 2, 1, Da] = (a_base, u), log-prob of u.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from embodied.core.checkpoint import load_weights
from embodied.core.errors import ConfigError
from embodied.core.io import atomic_directory
from embodied.policies.nets import GaussianMLP
from embodied.policies.policy import CONFIG_FILE, FORMAT_VERSION, ChunkPolicy
from embodied.policies.queue import ChunkQueue
from embodied.policies.samplers import Chain, gaussian_log_prob

RESIDUAL_WEIGHTS = "residual.safetensors"


class ResidualPolicy(nn.Module):
    def __init__(self, base: ChunkPolicy, hidden: tuple[int, ...] = (256, 256),
                 scale: float = 0.1, log_std_init: float = -1.0) -> None:
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        self.hidden, self.scale, self.log_std_init = tuple(hidden), scale, log_std_init
        c = base.config
        self.residual = GaussianMLP(self.feature_dim + c.action_dim, c.action_dim, hidden,
                                    log_std_init=log_std_init, zero_init_last=True)
        # Rollouts and evaluation see a one-action policy (Ta = 1) with the base's history
        # and cameras, so the collector keeps what the base plans from.
        self.config = dataclasses.replace(c, horizon=1, n_action_steps=1, frozen_steps=0)
        self._queue: ChunkQueue | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def feature_dim(self) -> int:
        """clip(norm(state), +-3), plus the frozen base's encoder features for an image or
        history base (the residual needs to see what the base sees)."""
        c = self.base.config
        extra = self.base.feature_dim if (c.cameras or c.n_obs_steps > 1) else 0
        return c.obs_dim + extra

    @property
    def num_chain_steps(self) -> int:
        return 1

    def train(self, mode: bool = True) -> ResidualPolicy:
        super().train(mode)
        self.base.eval()  # the frozen base never trains (no dropout/augmentation)
        return self

    # --- per-env base queue -------------------------------------------------------------
    def reset(self, num_envs: int) -> None:
        self._queue = ChunkQueue(num_envs, self.base.config.n_action_steps)

    def end_episodes(self, ended: torch.Tensor) -> None:
        if self._queue is not None:
            self._queue.clear(ended)  # that env's base replans on its next step

    @torch.no_grad()
    def _base_actions(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None):
        n = obs["state"].shape[0]
        if self._queue is None or len(self._queue.cursor) != n:
            self.reset(n)
        plan = self._queue.needs_plan().nonzero().flatten()
        if len(plan):
            chunk = self.base.act({k: v[plan] for k, v in obs.items()}, generator=generator,
                                  deterministic=True)
            self._queue.load(plan, chunk)
        return self._queue.pop().to(self.dtype)

    # --- acting and scoring -------------------------------------------------------------
    def encode(self, obs: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The residual's (and critic's) view of the observation: clip(norm(state), +-3) of
        the newest frame, and for an image / history base its frozen encoder's features."""
        obs = obs if isinstance(obs, dict) else {"state": obs}
        state = obs["state"]
        if state.dim() == 3:
            state = state[:, -1]
        norm = self.base.obs_normalizer.normalize(state.to(self.dtype)).clamp(-3.0, 3.0)
        if self.feature_dim == norm.shape[-1]:
            return norm
        with torch.no_grad():
            features = self.base.encode(obs).to(self.dtype)
        return torch.cat([norm, features], -1)

    def _dist(self, obs, base_action, features=None):
        features = self.encode(obs) if features is None else features
        return self.residual(torch.cat([features, base_action], -1))

    def sample(self, obs, generator: torch.Generator | None = None,
               deterministic: bool = False) -> tuple[torch.Tensor, Chain]:
        obs = obs if isinstance(obs, dict) else {"state": obs}
        base_action = self._base_actions(obs, generator)
        mean, log_std = self._dist(obs, base_action)
        if deterministic:
            u, lp = mean, mean.new_zeros(mean.shape[0])
        else:
            u = mean + log_std.exp() * torch.randn(mean.shape, generator=generator,
                                                   dtype=mean.dtype)
            lp = gaussian_log_prob(u, mean, log_std.exp())
        action = (base_action + self.scale * u).clamp(-1.0, 1.0)
        chain = Chain(torch.stack([base_action, u], 1)[:, :, None, :], lp[:, None])
        return action[:, None, :].float(), chain

    @torch.no_grad()
    def act(self, obs, generator: torch.Generator | None = None,
            deterministic: bool = True) -> torch.Tensor:
        return self.sample(obs, generator=generator, deterministic=deterministic)[0]

    def score_steps(self, obs, chain: Chain, first: int = 0, cond=None):
        base_action, u = chain.states[:, 0, 0], chain.states[:, 1, 0]
        mean, log_std = self._dist(obs, base_action, cond)
        return (gaussian_log_prob(u, mean, log_std.exp())[:, None],
                log_std.mean(-1, keepdim=True))

    def log_prob(self, obs, chain: Chain, first: int = 0) -> torch.Tensor:
        return self.score_steps(obs, chain, first)[0]

    # --- checkpoints --------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """base/ (a policy directory) + residual.safetensors + config.json, swapped in whole."""
        def fill(tmp: Path) -> None:
            self.base.save_pretrained(tmp / "base")
            meta = {"format_version": FORMAT_VERSION,
                    "residual": {"hidden": list(self.hidden), "scale": self.scale,
                                 "log_std_init": self.log_std_init}}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            state = {k: v.detach().cpu().contiguous()
                     for k, v in self.residual.state_dict().items()}
            save_file(state, str(tmp / RESIDUAL_WEIGHTS))

        return atomic_directory(path, fill)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ResidualPolicy:
        path = Path(path)
        meta = json.loads((path / CONFIG_FILE).read_text())["residual"]
        policy = cls(ChunkPolicy.from_pretrained(path / "base"), tuple(meta["hidden"]),
                     meta["scale"], meta["log_std_init"])
        policy.residual.load_state_dict(load_weights(path / RESIDUAL_WEIGHTS))
        return policy.eval()


def load_policy(path: str | Path) -> Any:
    """Any saved policy directory: a ChunkPolicy, a base + residual (ResiP), or a base +
    noise actor (DSRL)."""
    config = Path(path) / CONFIG_FILE
    if config.exists():
        try:
            meta = json.loads(config.read_text())
            if "residual" in meta:
                return ResidualPolicy.from_pretrained(path)
            if "dsrl" in meta:
                from embodied.policies.noise_space import NoisePolicy

                return NoisePolicy.from_pretrained(path)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config} is not valid JSON ({e})") from None
    return ChunkPolicy.from_pretrained(path)
