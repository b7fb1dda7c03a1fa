"""Rollouts: the collector (one engine for every loop) and the evaluation protocol."""

from embodied.policies.queue import ChunkQueue
from embodied.rollout.collector import (
    Collector,
    Decision,
    EpisodeStats,
    ObsHistory,
    Step,
)
from embodied.rollout.evaluation import check_policy_fits, evaluate

__all__ = ["ChunkQueue", "Collector", "Decision", "EpisodeStats", "ObsHistory", "Step",
           "check_policy_fits", "evaluate"]
