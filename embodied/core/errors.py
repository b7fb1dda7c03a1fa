"""Errors that name the problem and the fix."""


class EmbodiedError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(EmbodiedError, ValueError):
    """A configuration value is invalid."""


class DatasetError(EmbodiedError):
    """A dataset is missing, corrupt, or does not match what the caller expects."""


class RobotError(EmbodiedError):
    """A robot (real or fake) is unreachable, silent, or does not match what we expect."""


class CheckpointError(EmbodiedError):
    """A checkpoint, weights or training-state file is missing, truncated or corrupt."""
