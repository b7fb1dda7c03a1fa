"""embodied: RL fine-tuning of robot policies."""

__version__ = "0.1.0"
