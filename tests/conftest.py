import os

# Offscreen rendering without a display; mujoco reads this when it is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")
