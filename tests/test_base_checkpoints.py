"""The shipped base checkpoints load and still perform as documented.

Two different claims, tested apart:
- on one host, the same seed gives the same evaluation, bit for bit;
- across hosts the rollouts are not bit-identical (MuJoCo, numpy and torch take different
  SIMD paths on different CPUs, and contact-rich rollouts amplify the rounding), so the
  documented rate is a sample of the policy's success probability: the rate measured here
  must lie within a binomial tolerance of it, not equal it.
"""

import json
import math

import pytest

from embodied.core.paths import ASSETS_DIR
from embodied.policies.policy import ChunkPolicy
from embodied.rollout import evaluate

BASE = ASSETS_DIR / "base"
CHECKPOINTS = sorted(p.parent.name for p in BASE.glob("*/base.json"))


def binomial_tolerance(rate: float, episodes: int, z: float = 3.5) -> float:
    """Half-width for the difference of two independent n-episode success rates with the
    same success probability (z standard deviations; p clamped away from 0 and 1)."""
    p = min(max(rate, 0.05), 0.95)
    return z * math.sqrt(2 * p * (1 - p) / episodes)


def test_binomial_tolerance_is_a_real_bound():
    assert binomial_tolerance(0.6, 100) == pytest.approx(0.242, abs=1e-3)
    assert binomial_tolerance(0.6, 10_000) < 0.03
    # A base that lost its skill (0.6 -> 0.1) is far outside the band.
    assert abs(0.1 - 0.6) > binomial_tolerance(0.6, 100)


def test_every_task_with_an_expert_has_a_flow_base():
    for task in ("push_cube", "pick_place", "peg_insert", "hopper"):
        assert f"{task}_flow" in CHECKPOINTS


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_base_checkpoint_performs_as_documented(name):
    path = BASE / name
    documented = json.loads((path / "base.json").read_text())
    task, episodes = documented["task"], documented["eval_episodes"]
    policy = ChunkPolicy.from_pretrained(path)
    result = evaluate(policy, task, episodes, seed=documented["eval_seed"])
    tolerance = binomial_tolerance(documented["success_rate"], episodes)
    assert abs(result["success_rate"] - documented["success_rate"]) <= tolerance, (
        f"{name}: {result['success_rate']:.2f} here against {documented['success_rate']:.2f} "
        f"documented (tolerance {tolerance:.2f} for {episodes} episodes)")
    assert 0.1 <= result["success_rate"] <= 0.8  # room for RL, but a useful start
    assert f"| {task} |" in (BASE / "README.md").read_text()


def test_same_seed_gives_the_same_evaluation_on_this_host():
    policy = ChunkPolicy.from_pretrained(BASE / "push_cube_flow")
    first = evaluate(policy, "push_cube", 16, seed=3)
    second = evaluate(policy, "push_cube", 16, seed=3)
    assert first == second
