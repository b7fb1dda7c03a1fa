"""Per-env action queues: the chunk each env is executing (the collector's, and the base
chunk queue of a residual policy)."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


class ChunkQueue:
    """Per-env queue of the chunk being executed: an env plans when its queue is empty."""

    def __init__(self, num_envs: int, n_action_steps: int) -> None:
        self.Ta = n_action_steps
        self.queue: Tensor | None = None
        self.cursor = torch.full((num_envs,), n_action_steps)  # Ta = empty

    def needs_plan(self) -> Tensor:
        return self.cursor >= self.Ta

    def clear(self, mask: Tensor) -> None:
        """Drop the rest of the chunks of envs in `mask` (their episode ended)."""
        self.cursor = torch.where(mask, torch.full_like(self.cursor, self.Ta), self.cursor)

    def load(self, ids: Tensor, chunk: Tensor) -> None:
        if self.queue is None:
            self.queue = chunk.new_zeros((len(self.cursor), *chunk.shape[1:]))
        self.queue[ids] = chunk
        self.cursor[ids] = 0

    def pop(self) -> Tensor:
        actions = self.queue[torch.arange(len(self.cursor)), self.cursor.clamp(max=self.Ta - 1)]
        self.cursor += 1
        return actions
