"""DSRL's policy: a frozen chunk policy steered through its initial noise.

A small squashed-Gaussian actor (SAC's) picks the initial noise x_0 = bound * tanh(u)
[B, Tp, Da]; the frozen base's deterministic sampler (flow/shortcut ODE, diffusion's
noise-free transitions) maps (s, x_0) to the action chunk the env executes. The base is
never differentiated through (black box) and never changes; the actor sees the base's
normalised observations (its normaliser is copied from the base). Any ChunkPolicy with a
denoising chain works, and later VLA policies with the same `sample(..., x0=)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embodied.core.errors import ConfigError
from embodied.core.io import atomic_directory
from embodied.policies.config import PolicyConfig
from embodied.policies.policy import CONFIG_FILE, FORMAT_VERSION, ChunkPolicy
from embodied.policies.samplers import Chain


class NoisePolicy(nn.Module):
    def __init__(self, base: ChunkPolicy, bound: float = 1.5, hidden: int = 256) -> None:
        super().__init__()
        c = base.config
        if c.kind == "gaussian":
            raise ConfigError("DSRL steers a denoising chain through its initial noise: give a "
                              "flow, shortcut or diffusion base (a Gaussian policy has none)")
        if not bound > 0:
            raise ConfigError(f"noise_bound must be > 0, got {bound}")
        self.base = base.eval().requires_grad_(False)
        self.bound, self.hidden = float(bound), int(hidden)
        self.noise_shape = (c.horizon, c.action_dim)
        self.actor = ChunkPolicy(PolicyConfig(
            kind="gaussian", squash=True, obs_dim=c.obs_dim, action_dim=c.horizon * c.action_dim,
            horizon=1, n_action_steps=1, n_obs_steps=c.n_obs_steps, cameras=list(c.cameras),
            image_size=c.image_size,
            net_kwargs={"hidden": [hidden, hidden], "activation": "relu",
                        "state_dependent_std": True, "log_std_init": 0.0}))
        self.actor.obs_normalizer.load_state_dict(base.obs_normalizer.state_dict())
        self.config = c  # histories, chunks and cameras are the base's

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def feature_dim(self) -> int:
        return self.actor.feature_dim

    def parameters(self, recurse: bool = True):  # what an optimiser trains: the actor
        return self.actor.parameters(recurse)

    def reset(self, num_envs: int) -> None:
        self.base.reset(num_envs)

    def end_episodes(self, ended: torch.Tensor) -> None:
        self.base.end_episodes(ended)

    def encode(self, obs: Any) -> torch.Tensor:
        return self.actor.encode(obs)

    def rsample_squashed(self, obs: Any, cond: torch.Tensor | None = None,
                         generator: torch.Generator | None = None):
        """(a = tanh(u) [B, Tp*Da], log pi(a)); the noise is bound * a."""
        return self.actor.rsample_squashed(obs, cond, generator)

    def critic_action(self, a: torch.Tensor) -> torch.Tensor:
        """The critic's action input: the actor's squashed output itself, Q(s, x_0 / bound)."""
        return a

    def chunk_from(self, obs: Any, a: torch.Tensor) -> torch.Tensor:
        """The base's deterministic chunk [B, Ta, Da] from the noise bound * a."""
        x0 = (self.bound * a).view(a.shape[0], *self.noise_shape).to(self.base.dtype)
        return self.base.sample(obs, deterministic=True, x0=x0)[0]

    @torch.no_grad()
    def sample(self, obs: Any, generator: torch.Generator | None = None,
               deterministic: bool = False, x0: Any = None) -> tuple[torch.Tensor, Chain]:
        """(chunk, Chain whose states[:, 1] is the actor's squashed output a)."""
        draw = self.actor.sample(obs, generator=generator, deterministic=deterministic)[1]
        a = draw.states[:, 1].flatten(1)  # tanh of the draw ([B, 1, Tp*Da] -> [B, Tp*Da])
        chunk = self.chunk_from(obs, a)
        return chunk, Chain(torch.stack([torch.zeros_like(a), a], 1), a.new_zeros(a.shape[0], 1))

    def act(self, obs: Any, generator: torch.Generator | None = None,
            deterministic: bool = True) -> torch.Tensor:
        return self.sample(obs, generator, deterministic)[0]

    def save_pretrained(self, path: str | Path) -> Path:
        """base/ + actor/ (policy directories) + config.json, swapped in whole."""
        def fill(tmp: Path) -> None:
            self.base.save_pretrained(tmp / "base")
            self.actor.save_pretrained(tmp / "actor")
            meta = {"format_version": FORMAT_VERSION,
                    "dsrl": {"bound": self.bound, "hidden": self.hidden}}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

        return atomic_directory(path, fill)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> NoisePolicy:
        path = Path(path)
        meta = json.loads((path / CONFIG_FILE).read_text())["dsrl"]
        policy = cls(ChunkPolicy.from_pretrained(path / "base"), meta["bound"], meta["hidden"])
        policy.actor = ChunkPolicy.from_pretrained(path / "actor")
        return policy.eval()
