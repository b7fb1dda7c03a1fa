"""Robot episode datasets (LeRobot v3.0 layout)."""

from embodied.data.dataset import DatasetWriter, EpisodeDataset, Feature

__all__ = ["DatasetWriter", "EpisodeDataset", "Feature"]
