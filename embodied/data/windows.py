"""Training windows over an episode dataset: (observation history, action chunk) pairs.

For frame i of an episode: observations of frames i-To+1 .. i and actions of frames
i .. i+Tp-1, clamped to the episode (the first observation and the last action repeat at
the edges, as Diffusion Policy pads). Windows are index arrays; gathering is per batch.
"""

from __future__ import annotations

import numpy as np
import torch

from embodied.core.errors import DatasetError
from embodied.data.dataset import EpisodeDataset


class ChunkWindows:
    def __init__(self, dataset: EpisodeDataset, n_obs_steps: int, horizon: int,
                 cameras: tuple[str, ...] = ()) -> None:
        keys = ["observation.state", "action", *[f"observation.images.{c}" for c in cameras]]
        missing = [k for k in keys if k not in dataset.features]
        if missing:
            raise DatasetError(f"{dataset.root} has no {missing}; it has "
                               f"{sorted(dataset.features)} (cameras must be recorded: "
                               "`embodied collect ... cameras=[...]`)")
        arrays = dataset.to_numpy(keys)
        self.state = torch.from_numpy(arrays["observation.state"]).float()
        self.action = torch.from_numpy(arrays["action"]).float()
        self.images = {c: torch.from_numpy(arrays[f"observation.images.{c}"]) for c in cameras}
        lengths = dataset.episode_lengths()
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        ends = np.repeat(np.cumsum(lengths) - 1, lengths)
        frame = np.arange(len(self.state))
        obs_idx = frame[:, None] + np.arange(-n_obs_steps + 1, 1)[None]
        act_idx = frame[:, None] + np.arange(horizon)[None]
        self.obs_idx = torch.from_numpy(np.maximum(obs_idx, starts[:, None]))
        self.act_idx = torch.from_numpy(np.minimum(act_idx, ends[:, None]))
        self.stats = dataset.stats

    def __len__(self) -> int:
        return len(self.obs_idx)

    def batch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """obs {"state": [B, To, Do], "rgb_<cam>": [B, To, H, W, 3]}, actions [B, Tp, Da]."""
        obs_idx = self.obs_idx[idx]
        obs = {"state": self.state[obs_idx]}
        for cam, frames in self.images.items():
            obs[f"rgb_{cam}"] = frames[obs_idx]
        return obs, self.action[self.act_idx[idx]]

    def sample(self, batch_size: int, generator: torch.Generator):
        return self.batch(torch.randint(0, len(self), (batch_size,), generator=generator))
