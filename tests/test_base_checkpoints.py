"""The shipped base checkpoints load and reproduce their documented success rates."""

import json

import pytest

from embodied.core.paths import ASSETS_DIR
from embodied.policies.policy import ChunkPolicy
from embodied.rollout import evaluate

BASE = ASSETS_DIR / "base"
CHECKPOINTS = sorted(p.parent.name for p in BASE.glob("*/base.json"))


def test_every_task_with_an_expert_has_a_flow_base():
    for task in ("push_cube", "pick_place", "peg_insert", "hopper"):
        assert f"{task}_flow" in CHECKPOINTS


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_base_checkpoint_reproduces_documented_success(name):
    path = BASE / name
    documented = json.loads((path / "base.json").read_text())
    task = documented["task"]
    policy = ChunkPolicy.from_pretrained(path)
    result = evaluate(policy, task, documented["eval_episodes"], seed=documented["eval_seed"])
    assert result["success_rate"] == documented["success_rate"]
    assert 0.2 <= result["success_rate"] <= 0.7  # room for RL, but a useful start
    assert f"| {task} |" in (BASE / "README.md").read_text()
