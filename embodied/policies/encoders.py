"""Observation encoders: an observation history -> the conditioning vector cond[B, C].

Shapes: B batch, To observation history (n_obs_steps), Do state dims, H, W image size,
F image features per frame (image_out_dim), C = out_dim of the encoder.

    StateEncoder:       state[B, To, Do] (or [B, Do] when To = 1)           -> [B, C]
    ResNetImageEncoder: uint8 [B, H, W, 3] or float [B, 3, H, W] in [0, 1]  -> [B, F]
    MultiModalEncoder:  {"state": [B, To, Do], "rgb_<cam>": [B, To, H, W, 3]} -> [B, C]

State normalisation happens before the encoder (the policy's normaliser, saved with the
weights); images are scaled here, so raw camera frames can be fed directly.

Randomness: ResNetImageEncoder's random shift runs only in training mode. An on-policy
algorithm that recomputes log-probabilities must put the encoder in eval mode (or build it
with random_shift=0), or the features, and so the PPO ratio, change between passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embodied.core.errors import ConfigError
from embodied.policies.nets import group_norm


class StateEncoder(nn.Module):
    """Flatten the state history; identity when hidden is None (out_dim is then To * Do and
    the argument is ignored), else an MLP Linear -> LayerNorm -> Mish -> Linear(out_dim)."""

    def __init__(self, obs_dim: int, n_obs_steps: int = 1, hidden: int | None = None,
                 out_dim: int = 64) -> None:
        super().__init__()
        self.obs_dim, self.n_obs_steps = obs_dim, n_obs_steps
        in_dim = obs_dim * n_obs_steps
        if hidden is None:
            self.net: nn.Module = nn.Identity()
            self.out_dim = in_dim
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Mish(),
                                     nn.Linear(hidden, out_dim))
            self.out_dim = out_dim

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if state.dim() == 2 and self.n_obs_steps == 1:
            state = state.unsqueeze(1)
        if state.dim() != 3 or state.shape[1:] != (self.n_obs_steps, self.obs_dim):
            raise ValueError(f"state must be [B, To={self.n_obs_steps}, Do={self.obs_dim}], "
                             f"got {tuple(state.shape)}")
        return self.net(state.flatten(1))


class _ResBlock2d(nn.Module):
    """Basic ResNet block (two 3x3 convs) with GroupNorm: batch-size independent."""

    def __init__(self, cin: int, cout: int, stride: int, n_groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), group_norm(cout, n_groups),
            nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), group_norm(cout, n_groups))
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      group_norm(cout, n_groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class SpatialSoftmax(nn.Module):
    """Feature map [B, C, h, w] -> expected (x, y) of each of K keypoints [B, 2K] in [-1, 1].

    Keeps where things are, which global pooling throws away (Levine et al.; Diffusion Policy).
    """

    def __init__(self, channels: int, num_keypoints: int = 32) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, num_keypoints, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.proj(features)
        _, _, height, width = h.shape
        prob = h.flatten(2).softmax(dim=-1)  # [B, K, h*w]
        ys = torch.linspace(-1.0, 1.0, height, device=h.device, dtype=h.dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=h.device, dtype=h.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ex = (prob * grid_x.reshape(1, 1, -1)).sum(-1)
        ey = (prob * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.cat([ex, ey], dim=-1)


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ augmentation: replicate-pad by `pad` and crop back at a random offset per sample.

    images: float [B, C, H, W] -> same shape; shifts are integers in [-pad, pad].
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=images.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=images.device)
    rows = oy + torch.arange(h, device=images.device)  # [B, H]
    cols = ox + torch.arange(w, device=images.device)  # [B, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indexing with a slice in between puts the indexed dims first: [B, H, W, C].
    crop = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return crop.permute(0, 3, 1, 2)


def to_float_chw(images: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """uint8 [.., H, W, C] (camera layout) or float [.., C, H, W] in [0, 1] -> float CHW.

    The layout is read from where the channel axis is; when both fit (H == C), uint8 is
    taken as channels-last and float as channels-first.
    """
    first, last = images.shape[-3] == channels, images.shape[-1] == channels
    is_uint8 = images.dtype == torch.uint8
    if last and (not first or is_uint8):
        images = images.movedim(-1, -3)
    elif not first:
        raise ValueError(f"images must be [..., H, W, {channels}] or [..., {channels}, H, W], "
                         f"got {tuple(images.shape)}")
    if is_uint8:
        return images.float() / 255.0
    return images.float()


class ResNetImageEncoder(nn.Module):
    """Small ResNet (stem + residual stages, GroupNorm) -> spatial softmax or average pool
    -> Linear(out_dim). Total stride 2 (stem) * 2 per stage after the first."""

    def __init__(self, image_size: int | tuple[int, int], out_dim: int = 64,
                 channels: Sequence[int] = (32, 64, 128), random_shift: int = 4,
                 pool: str = "spatial_softmax", num_keypoints: int = 32, n_groups: int = 8,
                 blocks_per_stage: int = 1) -> None:
        super().__init__()
        if pool not in ("spatial_softmax", "avg"):
            raise ConfigError(f"pool must be 'spatial_softmax' or 'avg', got {pool!r}")
        if not channels:
            raise ConfigError("ResNetImageEncoder needs at least one stage in channels")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.out_dim, self.shift = out_dim, int(random_shift)
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
                                   group_norm(channels[0], n_groups), nn.ReLU()]
        cin = channels[0]
        for i, cout in enumerate(channels):
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(_ResBlock2d(cin, cout, stride, n_groups))
                cin = cout
        self.backbone = nn.Sequential(*layers)
        if pool == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftmax(cin, num_keypoints)
            pooled = 2 * num_keypoints
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            pooled = cin
        self.head = nn.Linear(pooled, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_chw(images)
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"images must be [B, H, W, 3] / [B, 3, H, W] with (H, W) = "
                             f"{self.image_size}, got {tuple(images.shape)}: resize the camera "
                             f"or build the encoder with that image_size")
        if self.training and self.shift > 0:
            x = random_shift(x, self.shift)
        x = x * 2.0 - 1.0  # [0, 1] -> [-1, 1]: zero-centred input for the first conv
        return self.head(self.pool(self.backbone(x)))


class MultiModalEncoder(nn.Module):
    """State history + camera frames -> cond [B, C]: [state features, for each camera in
    order, for each of the To frames, the image features]. One image encoder per camera, or
    one shared by all (share_image_encoder=True; fewer weights, cameras keep their slots).
    """

    def __init__(self, state_dim: int, n_obs_steps: int, cameras: Sequence[str],
                 image_size: int | tuple[int, int], state_hidden: int | None = None,
                 image_out_dim: int = 64, state_out_dim: int = 64,
                 share_image_encoder: bool = False,
                 image_kwargs: dict[str, object] | None = None) -> None:
        super().__init__()
        self.cameras = list(cameras)
        for cam in self.cameras:
            if not cam or "." in cam:
                raise ConfigError(f"camera names must be non-empty without '.', got {cam!r}")
        self.n_obs_steps = n_obs_steps
        # state_dim = 0: images only.
        self.state = (StateEncoder(state_dim, n_obs_steps, state_hidden, state_out_dim)
                      if state_dim > 0 else None)

        def image_encoder() -> ResNetImageEncoder:
            return ResNetImageEncoder(image_size, image_out_dim, **(image_kwargs or {}))

        # A shared encoder is registered once: safetensors refuses tensors saved twice.
        self.shared_image = image_encoder() if share_image_encoder and self.cameras else None
        self.images = nn.ModuleDict(
            {} if self.shared_image is not None else {c: image_encoder() for c in self.cameras})
        state_features = self.state.out_dim if self.state is not None else 0
        self.out_dim = state_features + len(self.cameras) * n_obs_steps * image_out_dim
        if self.out_dim == 0:
            raise ConfigError("MultiModalEncoder needs state_dim > 0 or at least one camera")

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self.keys() if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing}; this encoder expects {self.keys()}")
        features = [] if self.state is None else [self.state(obs["state"])]
        for cam in self.cameras:
            frames = obs[f"rgb_{cam}"]
            if frames.dim() == 4 and self.n_obs_steps == 1:
                frames = frames.unsqueeze(1)
            b, steps = frames.shape[:2]
            if steps != self.n_obs_steps:
                raise ValueError(f"rgb_{cam} must be [B, To={self.n_obs_steps}, H, W, 3], got "
                                 f"{tuple(frames.shape)}")
            # Fold time into the batch: one encoder pass for all frames.
            encoder = self.shared_image if self.shared_image is not None else self.images[cam]
            feats = encoder(frames.reshape(b * steps, *frames.shape[2:]))
            features.append(feats.reshape(b, -1))
        return torch.cat(features, dim=-1)

    def keys(self) -> list[str]:
        """The observation keys forward reads."""
        return (["state"] if self.state is not None else []) + [f"rgb_{c}" for c in self.cameras]
