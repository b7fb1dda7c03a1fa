"""mp4 videos of rollouts, written atomically with imageio's ffmpeg."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from embodied.core.io import atomic_write


def write_video(path: str | Path, frames: Sequence[np.ndarray] | np.ndarray, fps: float) -> Path:
    """Write RGB uint8 frames (T, H, W, 3) as an H.264 mp4."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")

    def write(tmp: Path) -> None:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264",
                                macro_block_size=1, ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(frame)

    atomic_write(path, write)
    return Path(path)
