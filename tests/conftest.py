import os

# Offscreen rendering without a display; mujoco reads this when it is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

# Small nets on 2 cores: one intra-op thread is faster (no thread handoffs) and steadier.
torch.set_num_threads(1)
