"""Replay buffer over N parallel envs: per-step transitions, n-step and chunk samples that
respect episode ends, saved in pieces with the training state.

Layout: a ring of T = capacity // num_envs time rows; row t % T holds every env's step t.
  frames[key]     [T, N, *shape]  the step's newest observation frame, stored once, in the
                                  dtype given (images uint8); histories are rebuilt from it
  action          [T, N, Da] float32    reward [T, N] float32
  terminated, truncated [T, N] bool     (separate: only termination stops bootstrapping)
  cut             [T, N] bool           the episode was cut here without a final observation
                                        (a forced reset, a dataset episode's open end): the
                                        step has no known next observation and is never used
  episode_start   [T, N] int64          the step (absolute time) its episode began at
Final observations of steps that ended an episode (terminated or truncated) are kept aside
(`final`, one frame per key), since the next row holds the next episode's first frame.

Histories (n_obs_steps To > 1) are the env's frames t-To+1..t, clamped to the episode's
first frame, exactly what the collector's ObsHistory gives a policy (a new episode's history
is its first frame repeated); a final observation's history is the step's history shifted
by one with the final frame appended.

Memory, per transition (one env step): sum of the frame bytes + 4 Da + 4 + 3 + 8 bytes
(`bytes_per_transition`): a 26-dim float32 state and 4-dim action take 135 B; one
64x64x3 uint8 camera adds 12,288 B (images are stored once, not per history frame or per
n-step copy). Final frames add one frame per episode.

n-step samples (`sample`): from step t, a segment of k <= n steps with
    reward = sum_{i<k} gamma^i r_{t+i},   discount = gamma^k (0 if it ended by termination),
    next_obs = the observation after step t+k-1 (its final observation if the episode ended
    by truncation there; anything if terminated, as the discount is 0).
The segment stops at the first episode end (a shorter segment, its own gamma^k), before a
cut step, and before the ring's write point (never bootstrapping from a row not yet written
or from one overwritten). Chunk samples (`sample_chunks`) are the same segment with h = n and
the actions a_{t:t+h}; a chunk cut by an episode end or the write point is padded: `mask`
marks its k valid steps, the actions after them repeat the last valid one, and the reward
and discount are the segment's (an absorbing state after a termination). `cut="drop"`
samples only chunks with all h steps inside one episode (k == h).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from embodied.core.errors import ConfigError
from embodied.core.io import atomic_write

PIECE_ROWS = 1024  # rows per saved piece: a save rewrites only the pieces written since


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass
class Batch:
    obs: dict[str, Tensor]        # [B, To, ...] histories at step t
    action: Tensor                # [B, Da] (n-step) or [B, h, Da] (chunks)
    reward: Tensor                # [B] discounted sum over the segment
    discount: Tensor              # [B] gamma^k, 0 after a termination
    next_obs: dict[str, Tensor]   # [B, To, ...] histories to bootstrap from
    steps: Tensor                 # [B] k, the segment's length
    mask: Tensor | None = None    # [B, h] valid steps of a chunk


class ReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, obs_spec: dict[str, tuple[tuple, Any]],
                 action_dim: int, n_obs_steps: int = 1) -> None:
        """obs_spec: {key: (frame shape, torch dtype)}, e.g. {"state": ((26,), float32),
        "rgb_front": ((64, 64, 3), uint8)}."""
        if num_envs < 1 or n_obs_steps < 1 or action_dim < 1:
            raise ConfigError("num_envs, n_obs_steps and action_dim must be >= 1")
        if capacity < 2 * num_envs:
            raise ConfigError(f"replay capacity {capacity} holds under two steps of "
                              f"{num_envs} envs; give at least {2 * num_envs}")
        self.T, self.N = capacity // num_envs, num_envs
        self.To, self.action_dim = n_obs_steps, action_dim
        self.obs_spec = {k: (tuple(shape), dtype) for k, (shape, dtype) in obs_spec.items()}
        T, N = self.T, self.N
        total, memory = self.bytes_per_transition * T * N, _physical_memory()
        if memory and total > 0.75 * memory:
            raise ConfigError(
                f"a replay buffer of {T * N:,} transitions x {self.bytes_per_transition:,} B "
                f"needs {total / 2**30:.1f} GiB, over 3/4 of this machine's "
                f"{memory / 2**30:.1f} GiB: lower buffer_size (e.g. "
                f"{int(0.25 * memory / self.bytes_per_transition):,})")
        self.frames = {k: torch.zeros((T, N, *shape), dtype=dtype)
                       for k, (shape, dtype) in self.obs_spec.items()}
        self.action = torch.zeros((T, N, action_dim))
        self.reward = torch.zeros((T, N))
        self.terminated = torch.zeros((T, N), dtype=torch.bool)
        self.truncated = torch.zeros((T, N), dtype=torch.bool)
        self.cut = torch.zeros((T, N), dtype=torch.bool)
        self.episode_start = torch.zeros((T, N), dtype=torch.long)
        self.final: dict[int, dict[str, Tensor]] = {}  # absolute step * N + env -> frames
        self.count = 0  # steps added: the absolute time of the next row
        self._episode_begins = torch.zeros(N, dtype=torch.long)
        self._dirty: set[int] = set()
        self._pieces: dict[str, str] = {}  # piece -> file of the last save (in _dir)
        self._dir: Path | None = None
        self._generation = 0

    # --- sizes -----------------------------------------------------------------------------

    @property
    def bytes_per_transition(self) -> int:
        frame = sum(int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
                    for shape, dtype in self.obs_spec.values())
        return frame + 4 * self.action_dim + 4 + 3 + 8

    def __len__(self) -> int:
        return min(self.count, self.T) * self.N

    @property
    def oldest(self) -> int:
        return max(0, self.count - self.T)

    # --- filling ---------------------------------------------------------------------------

    def add(self, obs: dict[str, Tensor], action: Tensor, reward: Tensor, terminated: Tensor,
            truncated: Tensor, final_obs: dict[str, Tensor] | None = None) -> None:
        """One step of every env. obs: the observations the action was taken from, [N, ...]
        frames or [N, To, ...] histories (the newest frame is stored); final_obs: the final
        observations of envs that ended (rows where terminated | truncated), same layout."""
        t, row = self.count, self.count % self.T
        if self.count >= self.T:  # overwriting: that row's final frames go with it
            for e in range(self.N):
                self.final.pop((t - self.T) * self.N + e, None)
        for k, store in self.frames.items():
            store[row] = self._newest(k, obs[k])
        self.action[row] = action.to(self.action.dtype)
        self.reward[row] = reward.to(self.reward.dtype)
        terminated, truncated = terminated.bool().cpu(), truncated.bool().cpu()
        self.terminated[row], self.truncated[row] = terminated, truncated & ~terminated
        self.cut[row] = False
        self.episode_start[row] = self._episode_begins
        ended = terminated | truncated
        if bool(ended.any()):
            if final_obs is None:
                raise ValueError("envs ended this step: pass their final_obs")
            for e in ended.nonzero().flatten().tolist():
                self.final[t * self.N + e] = {k: self._newest(k, final_obs[k])[e].clone()
                                              for k in self.frames}
        self._episode_begins = torch.where(ended, t + 1, self._episode_begins)
        self._dirty.add(row // PIECE_ROWS)
        self.count += 1

    def add_step(self, step: Any) -> None:
        """A collector `Step` (its next_obs rows that ended end in the final observation)."""
        self.add(step.obs, step.action, step.reward, step.terminated, step.truncated,
                 step.next_obs)

    def cut_episodes(self, envs: Tensor | None = None) -> None:
        """The running episodes of `envs` (all if None; a bool mask [N] or env indices) were
        cut without a final observation (forced resets, an episode's open end): their last
        steps get no next observation."""
        if self.count == 0:
            return
        row = (self.count - 1) % self.T
        if envs is None:
            mask = torch.ones(self.N, dtype=torch.bool)
        else:
            envs = torch.as_tensor(envs).cpu()
            if envs.dtype == torch.bool:  # a mask [N], as the collector's masks are
                if envs.shape != (self.N,):
                    raise ValueError(f"an env mask must have shape ({self.N},), got "
                                     f"{tuple(envs.shape)}")
                mask = envs.clone()
            else:  # env indices
                mask = torch.zeros(self.N, dtype=torch.bool).index_fill_(0, envs.long(), True)
        open_ = mask & ~(self.terminated[row] | self.truncated[row])
        self.cut[row] |= open_
        self._episode_begins = torch.where(mask, self.count, self._episode_begins)
        self._dirty.add(row // PIECE_ROWS)

    def add_episode(self, frames: dict[str, Tensor], actions: Tensor, rewards: Tensor,
                    terminated: bool) -> None:
        """One recorded episode into a one-env buffer (demos): frames [L, ...] per key,
        actions [L, Da], rewards [L]. Step i's next observation is frame i + 1; the last
        step ends the episode by termination, or else is cut (its next frame is unknown)."""
        if self.N != 1:
            raise ConfigError("add_episode fills a one-env buffer (num_envs=1), e.g. demos")
        if actions.shape[-1] != self.action_dim:
            raise ConfigError(f"the episode's actions have {actions.shape[-1]} dims, the "
                              f"buffer's {self.action_dim}: a dataset of another robot/task?")
        missing = sorted(set(self.frames) - set(frames))
        if missing:
            raise ConfigError(f"the episode has no {missing} observations; it has "
                              f"{sorted(frames)}")
        length = actions.shape[0]
        no = torch.zeros(1, dtype=torch.bool)
        for i in range(length):
            last = i == length - 1
            self.add({k: v[i:i + 1] for k, v in frames.items()}, actions[i:i + 1],
                     rewards[i:i + 1], torch.tensor([last and terminated]), no,
                     {k: v[i:i + 1] for k, v in frames.items()} if last and terminated else None)
        if not terminated:
            self.cut_episodes()

    def _newest(self, key: str, value: Tensor) -> Tensor:
        value = value.detach().cpu()
        shape = self.obs_spec[key][0]
        if value.dim() == len(shape) + 2:  # histories [N, To, ...]
            value = value[:, -1]
        if tuple(value.shape[1:]) != shape:
            raise ValueError(f"observation {key!r} has shape {tuple(value.shape[1:])}, the "
                             f"buffer stores {shape}")
        return value.to(self.obs_spec[key][1])

    # --- sampling --------------------------------------------------------------------------

    def sample(self, batch: int, n: int = 1, gamma: float = 0.99,
               generator: torch.Generator | None = None) -> Batch:
        """n-step transitions (module docstring) from uniformly drawn valid steps."""
        t, e = self._draw(batch, generator, None)
        return self._segment(t, e, n, gamma, chunk=False)

    def sample_chunks(self, batch: int, h: int, gamma: float = 0.99, cut: str = "pad",
                      generator: torch.Generator | None = None) -> Batch:
        """(s_t, a_{t:t+h}, reward, discount, s_{t+k}, mask): see the module docstring."""
        if cut not in ("pad", "drop"):
            raise ValueError(f"cut must be 'pad' or 'drop', got {cut!r}")
        accept = None
        if cut == "drop":
            def accept(t, e):  # noqa: E306 - whole chunks only
                return self._lengths(t, e, h) == h
        t, e = self._draw(batch, generator, accept)
        return self._segment(t, e, h, gamma, chunk=True)

    def _usable(self, t: Tensor, e: Tensor) -> Tensor:
        """Step t of env e is stored, its next observation is known, its history is kept."""
        newest = self.count - 1
        inside = (t >= self.oldest) & (t <= newest)
        tc = t.clamp(self.oldest, max(newest, 0))
        row = tc % self.T
        ended = self.terminated[row, e] | self.truncated[row, e]
        first = torch.maximum(tc - (self.To - 1), self.episode_start[row, e])
        return inside & ~self.cut[row, e] & (ended | (tc + 1 <= newest)) & (first >= self.oldest)

    def _draw(self, batch: int, generator, accept) -> tuple[Tensor, Tensor]:
        if self.count < 2:
            raise RuntimeError("the replay buffer holds fewer than two steps; add more first")
        t = torch.empty(batch, dtype=torch.long)
        e = torch.empty(batch, dtype=torch.long)
        todo = torch.ones(batch, dtype=torch.bool)
        for _ in range(1000):
            m = int(todo.sum())
            if m == 0:
                return t, e
            t[todo] = torch.randint(self.oldest, self.count, (m,), generator=generator)
            e[todo] = torch.randint(self.N, (m,), generator=generator)
            ok = self._usable(t, e)
            if accept is not None:
                ok &= accept(t, e)
            todo &= ~ok
        raise RuntimeError("could not draw valid replay samples (too few complete steps or "
                           "whole chunks stored); add more transitions first")

    def _lengths(self, t: Tensor, e: Tensor, n: int) -> Tensor:
        return self._walk(t, e, n, 1.0)[0]

    def _walk(self, t: Tensor, e: Tensor, n: int, gamma: float):
        """(k, reward sum, terminated, truncated-at-the-end) of segments from (t, e)."""
        b = t.shape[0]
        k = torch.zeros(b, dtype=torch.long)
        total = torch.zeros(b)
        alive = torch.ones(b, dtype=torch.bool)
        term = torch.zeros(b, dtype=torch.bool)
        trunc = torch.zeros(b, dtype=torch.bool)
        for j in range(n):
            idx = t + j
            can = alive & self._usable(idx, e)
            row = idx.clamp(max=self.count - 1) % self.T
            total += torch.where(can, gamma**j * self.reward[row, e], torch.zeros(()))
            k += can.long()
            term |= can & self.terminated[row, e]
            trunc |= can & self.truncated[row, e]
            alive = can & ~(self.terminated[row, e] | self.truncated[row, e])
        return k, total, term, trunc

    def _segment(self, t: Tensor, e: Tensor, n: int, gamma: float, chunk: bool) -> Batch:
        k, total, term, trunc = self._walk(t, e, n, gamma)
        last = t + k - 1
        nxt = self._history(t + k, e)  # written unless the segment ended (replaced below)
        ended = term | trunc
        if bool(ended.any()):
            rows = ended.nonzero().flatten()
            hist = self._history(last[rows], e[rows])
            for key in nxt:
                final = torch.stack([self.final[int(s) * self.N + int(v)][key]
                                     for s, v in zip(last[rows], e[rows], strict=True)])
                nxt[key][rows] = torch.cat([hist[key][:, 1:], final[:, None]], 1)
        discount = torch.where(term, torch.zeros(()), torch.full((), gamma) ** k.double()
                               ).float()
        if chunk:
            j = torch.arange(n)
            mask = j[None] < k[:, None]
            idx = t[:, None] + torch.minimum(j[None], (k - 1)[:, None])  # pad: repeat last
            action = self.action[idx % self.T, e[:, None]]
        else:
            mask, action = None, self.action[t % self.T, e]
        return Batch(self._history(t, e), action, total, discount, nxt, k, mask)

    def _history(self, t: Tensor, e: Tensor) -> dict[str, Tensor]:
        """[B, To, ...] histories at steps t: frames t-To+1..t clamped to the episode start
        (t past the write point reads the newest step: only ended segments, replaced)."""
        t = t.clamp(max=self.count - 1)
        row = t % self.T
        start = self.episode_start[row, e]
        offsets = torch.arange(self.To - 1, -1, -1)
        times = torch.maximum(t[:, None] - offsets[None], start[:, None])
        return {k: v[times % self.T, e[:, None]] for k, v in self.frames.items()}

    # --- saving ----------------------------------------------------------------------------

    _ARRAYS = ("action", "reward", "terminated", "truncated", "cut", "episode_start")

    def save(self, directory: str | Path) -> dict[str, Any]:
        """Write the pieces changed since the last save as new files (each atomic) and return
        the manifest that names every piece of this state. Store the manifest with the
        training state (the checkpoint is the commit point); files no manifest names are
        removed by `prune`. A kill mid-save leaves the previous manifest's files intact."""
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        if directory != self._dir:  # unchanged pieces live elsewhere: write them all here
            self._pieces = {}
            self._dirty = set(range(-(-min(self.count, self.T) // PIECE_ROWS)))
        # A generation no file here has, even after resuming from an older manifest.
        found = [int(p.stem.rsplit("_g", 1)[1]) for p in directory.glob("*_g*.pt")
                 if p.stem.rsplit("_g", 1)[1].isdigit()]
        self._generation = max([self._generation, *found]) + 1
        pieces = dict(self._pieces)
        for p in sorted(self._dirty):
            lo, hi = p * PIECE_ROWS, min((p + 1) * PIECE_ROWS, self.T)
            name = f"piece{p:05d}_g{self._generation:06d}.pt"
            arrays = {f"frames.{k}": v[lo:hi].clone() for k, v in self.frames.items()}
            arrays.update({a: getattr(self, a)[lo:hi].clone() for a in self._ARRAYS})
            atomic_write(directory / name, lambda path, arrays=arrays: torch.save(arrays, path))
            pieces[str(p)] = name
        self._dirty.clear()
        self._pieces, self._dir = pieces, directory
        finals = f"final_g{self._generation:06d}.pt"
        atomic_write(directory / finals, lambda path: torch.save(
            {"final": self.final, "episode_begins": self._episode_begins}, path))
        return {"count": self.count, "T": self.T, "N": self.N, "To": self.To,
                "action_dim": self.action_dim, "generation": self._generation,
                "obs_spec": self._spec_json(),
                "pieces": pieces, "final": finals}

    def load(self, directory: str | Path, manifest: dict[str, Any]) -> None:
        """Restore the state a manifest names (from `save`)."""
        directory = Path(directory).resolve()
        want = {"T": self.T, "N": self.N, "To": self.To, "action_dim": self.action_dim,
                "obs_spec": self._spec_json()}
        have = {k: manifest.get(k) for k in want}
        if have != want:
            raise ConfigError(f"the saved replay buffer has {have}, this run's {want}: resume "
                              "with the settings it was saved with")
        for p, name in manifest["pieces"].items():
            lo = int(p) * PIECE_ROWS
            arrays = torch.load(directory / name, weights_only=True)
            hi = lo + arrays["reward"].shape[0]
            for k, v in self.frames.items():
                v[lo:hi] = arrays[f"frames.{k}"]
            for a in self._ARRAYS:
                getattr(self, a)[lo:hi] = arrays[a]
        extra = torch.load(directory / manifest["final"], weights_only=True)
        self.final, self._episode_begins = extra["final"], extra["episode_begins"]
        self.count, self._generation = int(manifest["count"]), int(manifest["generation"])
        self._pieces, self._dirty, self._dir = dict(manifest["pieces"]), set(), directory

    def _spec_json(self) -> dict[str, list]:
        return {k: [list(shape), str(dtype).removeprefix("torch.")]
                for k, (shape, dtype) in self.obs_spec.items()}

    @staticmethod
    def prune(directory: str | Path, manifest: dict[str, Any]) -> None:
        """Remove piece files the (committed) manifest does not name."""
        keep = set(manifest["pieces"].values()) | {manifest["final"]}
        for path in Path(directory).glob("*_g*.pt"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
