"""Denoiser nets (MLP, 1-D temporal U-Net, Transformer), the ReinFlow noise head, and the
Gaussian / value MLPs of RL baselines and residual policies.

Shapes: B batch, Tp predicted action steps (horizon), Da action dims, C conditioning
features (from an encoder), E time-embedding width.

    denoiser(x[B, Tp, Da], t[B], cond[B, C], d[B] | None = None) -> [B, Tp, Da]
    noise_head(x[B, Tp, Da], t[B], cond[B, C]) -> raw unbounded [B, Tp, Da]
    gaussian(x[..., in]) -> (mean[..., out], log_std[..., out])
    value(x[B, in]) -> [B]

Time: every net embeds `t * time_scale` sinusoidally. The default `time_scale=1000` suits
flow times in [0, 1] (and shortcut step sizes d in (0, 1]); a diffusion policy whose `t`
holds integer timesteps (0..~1000) builds its net with `time_scale=1.0`. `t` may also be a
scalar, broadcast over the batch.

No dropout anywhere: RL fine-tuning recomputes log-likelihoods through these nets and needs
them deterministic, so that the PPO ratio is exactly 1 on the first minibatch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from embodied.core.errors import ConfigError


# --- small shared pieces -----------------------------------------------------------------
def group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides `channels`.

    GroupNorm, not BatchNorm: statistics per sample, so batch 1 (acting) and batch 256
    (training) see the same function, and RL updates do not shift running statistics.
    """
    groups = max(g for g in range(1, max(1, min(max_groups, channels)) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _batch_time(t: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """t as a float [B] tensor on like's device (a scalar is broadcast over the batch)."""
    t = torch.as_tensor(t, device=like.device).to(like.dtype)
    if t.dim() == 0:
        return t.expand(batch)
    return t.reshape(batch)  # also accepts [B, 1]


def _check_input(x: torch.Tensor, horizon: int, action_dim: int) -> None:
    if x.dim() != 3 or x.shape[1:] != (horizon, action_dim):
        raise ValueError(f"x must be [B, Tp={horizon}, Da={action_dim}], got {tuple(x.shape)}")


class SinusoidalEmbedding(nn.Module):
    """Fixed sin/cos features of a scalar per sample: t[B] -> [B, dim].

    Frequencies span 1 .. 1/10000 (Transformer positions), which resolve values in about
    [0, 1000]. Flow times in [0, 1] are therefore multiplied by `scale=1000` first;
    integer diffusion timesteps use scale=1.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ConfigError(f"SinusoidalEmbedding needs an even dim >= 2, got {dim}")
        self.dim, self.scale = dim, float(scale)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = (t.float() * self.scale)[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1).to(t.dtype)


class TimeEmbedding(nn.Sequential):
    """Sinusoidal features then a small MLP (Diffusion Policy): t[B] -> [B, dim]."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__(SinusoidalEmbedding(dim, scale), nn.Linear(dim, 4 * dim), nn.Mish(),
                         nn.Linear(4 * dim, dim))


class _TimeStep(nn.Module):
    """[time emb, step emb] of a denoiser; checks that d is given iff step_embedding."""

    def __init__(self, time_dim: int, step_embedding: bool, time_scale: float) -> None:
        super().__init__()
        self.step_embedding = step_embedding
        self.time = TimeEmbedding(time_dim, time_scale)
        # d is a flow step size in (0, 1] for shortcut models, so it keeps the flow scale.
        self.step = TimeEmbedding(time_dim, 1000.0) if step_embedding else None
        self.out_dim = time_dim * (2 if step_embedding else 1)

    def forward(self, t: torch.Tensor, d: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        if self.step_embedding and d is None:
            raise ValueError("this denoiser was built with step_embedding=True (shortcut "
                             "model): pass the step size d[B]")
        if not self.step_embedding and d is not None:
            raise ValueError("this denoiser was built with step_embedding=False, so d must be "
                             "None (build it with step_embedding=True for a shortcut model)")
        emb = self.time(_batch_time(t, x.shape[0], x))
        if self.step is None or d is None:
            return emb
        return torch.cat([emb, self.step(_batch_time(d, x.shape[0], x))], dim=-1)


# --- MLP denoiser ------------------------------------------------------------------------
class _ResidualMLPBlock(nn.Module):
    """Pre-norm residual block; the conditioning is added inside every block so that time
    and observation stay visible at depth instead of being washed out of the stream."""

    def __init__(self, hidden: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.cond = nn.Linear(cond_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.norm(h)) + self.cond(c)))


class MLPDenoiser(nn.Module):
    """Flattened chunk + conditioning -> residual MLP -> [B, Tp, Da]. Fast for small Tp*Da."""

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, hidden: int = 256,
                 depth: int = 3, time_dim: int = 64, step_embedding: bool = False,
                 time_scale: float = 1000.0) -> None:
        super().__init__()
        self.horizon, self.action_dim, self.step_embedding = horizon, action_dim, step_embedding
        self.embed = _TimeStep(time_dim, step_embedding, time_scale)
        c_dim = cond_dim + self.embed.out_dim
        self.inp = nn.Linear(horizon * action_dim + c_dim, hidden)
        self.blocks = nn.ModuleList(_ResidualMLPBlock(hidden, c_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(),
                                 nn.Linear(hidden, horizon * action_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                d: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, self.horizon, self.action_dim)
        c = torch.cat([cond, self.embed(t, d, x)], dim=-1)
        h = self.inp(torch.cat([x.flatten(1), c], dim=-1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).view_as(x)


# --- 1-D temporal U-Net (Chi et al., Diffusion Policy) ----------------------------------
class _Conv1dBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, n_groups: int) -> None:
        super().__init__(nn.Conv1d(cin, cout, kernel, padding=kernel // 2),
                         group_norm(cout, n_groups), nn.Mish())


class _FiLMResBlock1d(nn.Module):
    """Two conv blocks; FiLM (per-channel scale, bias from the conditioning) between them."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, n_groups: int) -> None:
        super().__init__()
        self.block0 = _Conv1dBlock(cin, cout, kernel, n_groups)
        self.block1 = _Conv1dBlock(cout, cout, kernel, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.block0(x)
        scale, bias = self.film(c).unsqueeze(-1).chunk(2, dim=1)
        h = (1.0 + scale) * h + bias  # 1 + scale: starts near identity (stabler than scale)
        return self.block1(h) + self.skip(x)


class UNet1D(nn.Module):
    """Temporal 1-D U-Net over the action sequence, FiLM-conditioned on [time, step, cond].

    Down level i: two FiLM res blocks (-> down_dims[i]) then a stride-2 conv; the up path
    mirrors it with skip connections (the full-resolution skip feeds the final block).
    Downsampling is built only while the length is >= 4, so short horizons (Tp=4) keep a
    length >= 2 at the bottleneck; odd lengths are cropped back after upsampling.
    """

    def __init__(self, horizon: int, action_dim: int, cond_dim: int,
                 down_dims: Sequence[int] = (64, 128, 256), kernel_size: int = 5,
                 n_groups: int = 8, time_dim: int = 64, step_embedding: bool = False,
                 time_scale: float = 1000.0) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"UNet1D kernel_size must be odd (same-length conv), got "
                              f"{kernel_size}")
        if not down_dims:
            raise ConfigError("UNet1D needs at least one entry in down_dims")
        self.horizon, self.action_dim, self.step_embedding = horizon, action_dim, step_embedding
        self.embed = _TimeStep(time_dim, step_embedding, time_scale)
        c_dim = cond_dim + self.embed.out_dim
        dims = list(down_dims)

        def res(cin: int, cout: int) -> _FiLMResBlock1d:
            return _FiLMResBlock1d(cin, cout, c_dim, kernel_size, n_groups)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        self.upsample = nn.ModuleList()  # upsample[i] undoes downsample[i]
        length, cin = horizon, action_dim
        for i, dim in enumerate(dims):
            self.down.append(nn.ModuleList([res(cin, dim), res(dim, dim)]))
            if i < len(dims) - 1 and length >= 4:
                self.downsample.append(nn.Conv1d(dim, dim, 3, stride=2, padding=1))
                self.upsample.append(nn.ConvTranspose1d(dim, dim, 4, stride=2, padding=1))
                length = (length + 1) // 2
            else:
                self.downsample.append(nn.Identity())
                self.upsample.append(nn.Identity())
            cin = dim
        self.mid = nn.ModuleList([res(dims[-1], dims[-1]), res(dims[-1], dims[-1])])
        # Up level i (from the deepest to 1): [h, skip_i] -> down_dims[i - 1].
        self.up = nn.ModuleList(
            nn.ModuleList([res(2 * dims[i], dims[i - 1]), res(dims[i - 1], dims[i - 1])])
            for i in range(len(dims) - 1, 0, -1))
        self.final = nn.Sequential(_Conv1dBlock(2 * dims[0], dims[0], kernel_size, n_groups),
                                   nn.Conv1d(dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                d: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, self.horizon, self.action_dim)
        c = torch.cat([cond, self.embed(t, d, x)], dim=-1)
        h = x.transpose(1, 2)  # [B, Da, Tp]: convolve along time
        skips = []
        for (res0, res1), down in zip(self.down, self.downsample, strict=True):
            h = res1(res0(h, c), c)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, c)
        for level, (res0, res1) in zip(range(len(self.up), 0, -1), self.up, strict=True):
            h = res1(res0(torch.cat([h, skips[level]], dim=1), c), c)
            h = self.upsample[level - 1](h)[..., : skips[level - 1].shape[-1]]
        h = self.final(torch.cat([h, skips[0]], dim=1))
        return h.transpose(1, 2)


# --- Transformer denoiser ----------------------------------------------------------------
class TransformerDenoiser(nn.Module):
    """One token per action step after two prefix tokens, cond and [time (, step)];
    bidirectional self-attention (TransformerEncoder, pre-norm) and a linear read-out of the
    action tokens.
    """

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, d_model: int = 128,
                 nhead: int = 4, num_layers: int = 2, time_dim: int = 64,
                 step_embedding: bool = False, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.horizon, self.action_dim, self.step_embedding = horizon, action_dim, step_embedding
        self.embed = _TimeStep(time_dim, step_embedding, time_scale)
        self.cond_token = nn.Linear(cond_dim, d_model)
        self.time_token = nn.Linear(self.embed.out_dim, d_model)
        self.action_in = nn.Linear(action_dim, d_model)
        # Learned positions for prefix and action tokens alike (also tells prefixes apart).
        self.pos = nn.Parameter(torch.randn(1, 2 + horizon, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=4 * d_model,
                                           dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, action_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                d: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, self.horizon, self.action_dim)
        prefix = torch.stack([self.cond_token(cond), self.time_token(self.embed(t, d, x))], 1)
        tokens = torch.cat([prefix, self.action_in(x)], dim=1) + self.pos
        return self.out(self.encoder(tokens)[:, 2:])


_DENOISERS: dict[str, type[nn.Module]] = {
    "mlp": MLPDenoiser, "unet": UNet1D, "transformer": TransformerDenoiser}


def build_denoiser(name: str, **kwargs: object) -> nn.Module:
    """A denoiser by name ("mlp", "unet", "transformer"); kwargs go to its constructor."""
    if name not in _DENOISERS:
        raise ConfigError(f"unknown denoiser {name!r}; valid names: {sorted(_DENOISERS)}")
    return _DENOISERS[name](**kwargs)


# --- heads for RL ------------------------------------------------------------------------
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU}


def mlp(in_dim: int, hidden: Sequence[int], activation: str = "tanh",
        layer_norm: bool = False) -> tuple[nn.Sequential, int]:
    """Hidden layers only (Linear [-> LayerNorm] -> act), orthogonally initialised (gain
    sqrt 2, CleanRL / SB3 practice for PPO); returns (trunk, width of its output)."""
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; valid: {sorted(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        linear = nn.Linear(width, h)
        nn.init.orthogonal_(linear.weight, math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, *([nn.LayerNorm(h)] if layer_norm else []), _ACTIVATIONS[activation]()]
        width = h
    return nn.Sequential(*layers), width


def _head(width: int, out: int, gain: float, zero: bool) -> nn.Linear:
    linear = nn.Linear(width, out)
    if zero:
        nn.init.zeros_(linear.weight)
    else:
        nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


class NoiseHead(nn.Module):
    """ReinFlow / Flow-Noise exploration-noise net: (cond, time emb [, x]) -> raw [B, Tp, Da].

    The output is unbounded; the sampler maps it into [sigma_min, sigma_max]. The last layer
    is initialised small (not zero, so gradients reach the trunk from the first update):
    raw ~ 0 means a std midway, in log space, between the sampler's bounds.
    """

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, hidden: int = 128,
                 time_dim: int = 32, use_x: bool = False, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.horizon, self.action_dim, self.use_x = horizon, action_dim, use_x
        self.time = TimeEmbedding(time_dim, time_scale)
        in_dim = cond_dim + time_dim + (horizon * action_dim if use_x else 0)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Mish(), nn.Linear(hidden, hidden),
                                 nn.Mish(), nn.Linear(hidden, horizon * action_dim))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.horizon, self.action_dim)
        parts = [cond, self.time(_batch_time(t, x.shape[0], x))]
        if self.use_x:
            parts.append(x.flatten(1))
        return self.net(torch.cat(parts, dim=-1)).view_as(x)


class GaussianMLP(nn.Module):
    """Diagonal Gaussian policy / residual head: x[..., in] -> (mean, log_std)[..., out].

    log_std is a free parameter (state_dependent_std=False, PPO practice) or a second head;
    it is clamped to [log_std_min, log_std_max]. zero_init_last=True zeroes the output layers
    so the mean starts at exactly 0 (residual policies start as the base policy).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256),
                 log_std_init: float = -1.0, state_dependent_std: bool = False,
                 zero_init_last: bool = False, activation: str = "tanh",
                 layer_norm: bool = False, log_std_min: float = -5.0,
                 log_std_max: float = 2.0) -> None:
        super().__init__()
        self.trunk, width = mlp(in_dim, hidden, activation, layer_norm)
        self.mean = _head(width, out_dim, 0.01, zero_init_last)  # small: start near the prior
        self.log_std_bounds = (log_std_min, log_std_max)
        self.log_std_head: nn.Linear | None = None
        if state_dependent_std:
            self.log_std_head = _head(width, out_dim, 0.01, zero_init_last)
            nn.init.constant_(self.log_std_head.bias, log_std_init)
        else:
            self.log_std = nn.Parameter(torch.full((out_dim,), float(log_std_init)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        mean = self.mean(h)
        if self.log_std_head is not None:
            log_std = self.log_std_head(h)
        else:
            log_std = self.log_std.expand_as(mean)
        return mean, log_std.clamp(*self.log_std_bounds)


class ValueMLP(nn.Module):
    """State-value critic on observation features: x[B, in] -> [B]."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "tanh",
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.trunk, width = mlp(in_dim, hidden, activation, layer_norm)
        self.head = _head(width, 1, 1.0, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).squeeze(-1)
