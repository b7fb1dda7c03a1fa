"""Each safety rule triggers, holds or limits the command, and says why."""

from __future__ import annotations

import logging
import os
import re
import time

import numpy as np
import pytest

from embodied.core.errors import ConfigError
from embodied.sim2real.safety import (
    CLIP_RULES,
    HOLD_RULES,
    Intervention,
    KeyboardEstop,
    SafetyConfig,
    SafetyLayer,
)


def make_layer(**overrides) -> tuple[SafetyLayer, list[Intervention]]:
    """A 3-dim layer with limits [-1, 1], observed fresh at t=0; returns it and its log."""
    kwargs = dict(action_low=[-1.0] * 3, action_high=[1.0] * 3)
    kwargs.update(overrides)
    events: list[Intervention] = []
    layer = SafetyLayer(SafetyConfig(**kwargs), log=events.append)
    layer.observe(0.0, now=0.0)
    return layer, events


def assert_explained(events: list[Intervention]) -> None:
    for event in events:
        assert event.rule in HOLD_RULES + CLIP_RULES
        assert isinstance(event.reason, str) and len(event.reason) > 5


def test_out_of_limit_action_is_clipped_and_logged(caplog):
    layer, events = make_layer()
    with caplog.at_level(logging.WARNING, logger="embodied.sim2real.safety"):
        out = layer.filter([0.5, -2.0, 1.7], now=0.01)
    np.testing.assert_array_equal(out, [0.5, -1.0, 1.0])
    assert [e.rule for e in events] == ["action_limit"]
    assert "action[2]=1.7 above action limit 1: clipped" in events[0].reason
    assert "action[1]=-2 below action limit -1" in events[0].reason
    np.testing.assert_array_equal(events[0].before, [0.5, -2.0, 1.7])
    assert "action_limit" in caplog.text and "action[2]=1.7" in caplog.text
    assert layer.state_at(0.01) == "ok"
    assert_explained(events)


def test_joint_limits_clip_the_leading_dims():
    layer, events = make_layer(joint_low=[-0.5, -0.5], joint_high=[0.5, 0.5])
    out = layer.filter([0.9, -0.7, 0.9], now=0.01)
    np.testing.assert_array_equal(out, [0.5, -0.5, 0.9])  # dim 2 (gripper) is not a joint
    assert [e.rule for e in events] == ["joint_limit"]
    assert "joint limit" in events[0].reason


def test_large_jump_is_capped_from_the_last_command():
    layer, events = make_layer(max_delta=0.1)
    layer.observe(0.0, joint_pos=[0.3, 0.3, 0.3], now=0.0)
    # Before any command the reference is the reported joint position.
    np.testing.assert_allclose(layer.filter([0.35, 0.3, 0.3], now=0.01), [0.35, 0.3, 0.3])
    np.testing.assert_allclose(layer.filter([1.0, 0.3, 0.0], now=0.02), [0.45, 0.3, 0.2])
    np.testing.assert_allclose(layer.filter([1.0, 0.3, 0.0], now=0.03), [0.55, 0.3, 0.1])
    assert [e.rule for e in events] == ["max_delta", "max_delta"]
    assert "action[0] moves +0.65" in events[0].reason and "capped" in events[0].reason
    assert_explained(events)


def test_per_dim_max_delta():
    layer, _ = make_layer(max_delta=[0.1, 0.5, 1.0], hold_mode="zero")
    np.testing.assert_allclose(layer.filter([1.0, 1.0, 1.0], now=0.01), [0.1, 0.5, 1.0])


def test_workspace_exit_holds_until_back_inside():
    layer, events = make_layer(workspace_low=[0, 0, 0], workspace_high=[1, 1, 1])
    layer.observe(0.0, ee_pos=[0.5, 0.5, 0.5], now=0.0)
    safe = layer.filter([0.2, 0.2, 0.2], now=0.01)
    layer.observe(0.02, ee_pos=[1.2, 0.5, 0.5], now=0.02)
    for t in (0.03, 0.04, 0.05):
        np.testing.assert_array_equal(layer.filter([0.9, 0.9, 0.9], now=t), safe)
    assert layer.state_at(0.05) == "workspace"
    assert [e.rule for e in events] == ["workspace"]  # recorded once, when the hold starts
    assert "x=1.2 outside [0, 1]" in events[0].reason and "hold" in events[0].reason
    layer.observe(0.06, ee_pos=[0.9, 0.5, 0.5], now=0.06)
    np.testing.assert_array_equal(layer.filter([0.9, 0.9, 0.9], now=0.07), [0.9, 0.9, 0.9])


def test_workspace_target_in_the_action_is_clipped_into_the_box():
    layer, events = make_layer(action_low=[-2] * 4, action_high=[2] * 4,
                               workspace_low=[0, 0, 0], workspace_high=[1, 1, 1],
                               workspace_action_dims=(1, 2, 3))
    out = layer.filter([1.5, 1.5, 0.5, -0.2], now=0.01)
    np.testing.assert_array_equal(out, [1.5, 1.0, 0.5, 0.0])
    assert [e.rule for e in events] == ["workspace_target"]
    assert "action[1]=1.5 above workspace box 1" in events[0].reason


def test_stale_observation_holds():
    layer, events = make_layer(hold_mode="zero")
    np.testing.assert_array_equal(layer.filter([0.5, 0.5, 0.5], now=0.1), [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(layer.filter([0.5, 0.5, 0.5], now=0.3), [0, 0, 0])
    assert layer.state_at(0.3) == "stale"
    assert events[-1].rule == "stale" and "0.300s old" in events[-1].reason
    layer.observe(0.3, now=0.3)
    np.testing.assert_array_equal(layer.filter([0.5, 0.5, 0.5], now=0.31), [0.5, 0.5, 0.5])


def test_no_observation_and_future_stamp_count_as_stale():
    layer = SafetyLayer(SafetyConfig([-1.0], [1.0], hold_mode="zero"))
    np.testing.assert_array_equal(layer.filter([0.5], now=1.0), [0.0])
    assert "no observation" in layer.interventions[-1].reason
    layer.observe(time.time(), now=1.0)  # wall clock instead of monotonic: a common mix-up
    np.testing.assert_array_equal(layer.filter([0.5], now=1.0), [0.0])
    assert "future" in layer.interventions[-1].reason


def test_nonfinite_action_holds():
    layer, events = make_layer()
    safe = layer.filter([0.1, 0.1, 0.1], now=0.01)
    np.testing.assert_array_equal(layer.filter([np.nan, 0.1, 0.1], now=0.02), safe)
    assert events[-1].rule == "nonfinite"


def test_watchdog_tick_returns_hold_after_silence():
    layer, events = make_layer(hold_mode="zero", watchdog_s=0.5)
    assert layer.tick(now=0.1) is None  # not armed before the first command
    layer.filter([0.5, 0.5, 0.5], now=0.1)
    layer.observe(0.6, now=0.6)
    assert layer.tick(now=0.5) is None
    np.testing.assert_array_equal(layer.tick(now=0.7), [0, 0, 0])
    np.testing.assert_array_equal(layer.tick(now=0.71), [0, 0, 0])
    assert layer.state_at(0.7) == "watchdog"
    assert [e.rule for e in events] == ["watchdog"]
    assert "no command for 0.600s" in events[0].reason
    layer.filter([0.5, 0.5, 0.5], now=0.72)
    assert layer.tick(now=0.73) is None and layer.state_at(0.73) == "ok"


def test_estop_latches_until_reset():
    layer, events = make_layer()
    safe = layer.filter([0.1, 0.2, 0.3], now=0.01)
    layer.estop("operator pressed stop", now=0.02)
    for i, t in enumerate((0.03, 0.04, 0.05, 0.06)):
        layer.observe(t, now=t)
        np.testing.assert_array_equal(layer.filter([0.9, -0.9, float(i) / 10], now=t), safe)
        assert layer.state_at(t) == "estopped"
    assert [e.rule for e in events] == ["estop"]
    assert "operator pressed stop" in events[0].reason
    assert layer.reset_estop(now=0.07) is True
    assert layer.reset_estop(now=0.07) is False  # nothing latched any more
    assert "reset" in events[-1].reason
    np.testing.assert_array_equal(layer.filter([0.9, -0.9, 0.0], now=0.08), [0.9, -0.9, 0.0])
    assert_explained(events)


def test_disconnect_holds_until_reconnect():
    layer, events = make_layer(hold_mode="zero")
    layer.on_disconnect(now=0.01)
    np.testing.assert_array_equal(layer.filter([0.5, 0.5, 0.5], now=0.02), [0, 0, 0])
    np.testing.assert_array_equal(layer.filter([0.5, 0.5, 0.5], now=0.03), [0, 0, 0])
    assert layer.state_at(0.03) == "disconnected"
    layer.on_reconnect(now=0.04)
    np.testing.assert_array_equal(layer.filter([0.5, 0.5, 0.5], now=0.05), [0.5, 0.5, 0.5])
    assert [e.rule for e in events] == ["disconnect", "disconnect"]
    assert "disconnected" in events[0].reason and "reconnected" in events[1].reason


def test_hold_before_the_first_command_is_the_measured_position_or_nothing():
    layer, _ = make_layer(joint_low=[-0.5, -0.5], joint_high=[0.5, 0.5])
    assert layer.hold_action() is None  # zeros would be a real target: no hold at all
    layer.observe(0.0, joint_pos=[0.2, 0.9], now=0.0)
    assert layer.hold_action() is None  # dim 2 (a gripper, say) has no measured position
    layer.observe(0.0, joint_pos=[0.2, 0.9, -0.3], now=0.0)
    np.testing.assert_array_equal(layer.hold_action(), [0.2, 0.5, -0.3])  # clipped to limits
    gripper, _ = make_layer(hold_zero_dims=(2,))  # a velocity dim needs no measured position
    gripper.observe(0.0, joint_pos=[0.2, 0.3], now=0.0)
    np.testing.assert_array_equal(gripper.hold_action(), [0.2, 0.3, 0.0])
    zero, _ = make_layer(hold_mode="zero")  # velocity commands: zero stops, positions ignored
    np.testing.assert_array_equal(zero.hold_action(), [0, 0, 0])
    zero.observe(0.0, joint_pos=[0.2, 0.3], now=0.0)
    np.testing.assert_array_equal(zero.hold_action(), [0, 0, 0])


def test_first_command_moves_from_the_measured_pose_not_from_zero():
    layer, events = make_layer(max_delta=0.05)
    # Nothing sent and nothing measured: max_delta has no start, so nothing is sent.
    assert layer.filter([0.9, 0.9, 0.9], now=0.01) is None
    assert events[-1].rule == "stale" and events[-1].after is None
    assert "no measured position of action dims [0, 1, 2]" in events[-1].reason
    assert "nothing sent" in events[-1].reason and layer.state_at(0.01) == "stale"
    assert layer.tick(now=1.0) is None  # the watchdog has nothing to hold either
    layer.observe(1.0, joint_pos=[-0.8, 0.3, 0.88], now=1.0)
    np.testing.assert_allclose(layer.filter([0.9, 0.9, 0.9], now=1.01), [-0.75, 0.35, 0.9])
    np.testing.assert_allclose(layer.filter([0.9, 0.9, 0.9], now=1.02), [-0.7, 0.4, 0.9])


@pytest.mark.parametrize("stop", ["estop", "nan_action"])
def test_a_hold_before_the_first_command_holds_the_measured_pose(stop):
    layer, events = make_layer(max_delta=0.05)

    def first(now: float) -> np.ndarray | None:
        if stop == "estop":
            layer.estop("operator", now=now)
            return layer.filter([0.9, 0.9, 0.9], now=now)
        return layer.filter([np.nan, 0.9, 0.9], now=now)

    assert first(0.01) is None  # nothing measured: nothing sent, not zeros
    layer.reset_estop(now=0.02)
    layer.observe(0.02, joint_pos=[0.4, -0.2, 0.1], now=0.02)
    np.testing.assert_array_equal(first(0.03), [0.4, -0.2, 0.1])
    assert {"estop": "estop", "nan_action": "nonfinite"}[stop] in [e.rule for e in events]


NONFINITE = [
    (dict(ee_pos=[0.5, np.nan, 0.5]), "ee_pos[1]=nan"),
    (dict(joint_pos=[np.nan, 0.1, 0.1]), "joint_pos[0]=nan"),
    (dict(obs_stamp=np.nan), "stamp=nan"),
    (dict(state=[0.0, np.inf]), "state[1]=inf"),
]


@pytest.mark.parametrize("bad, shown", NONFINITE, ids=["ee_pos", "joint_pos", "stamp", "state"])
def test_nonfinite_observation_holds_and_is_logged(bad, shown):
    layer, events = make_layer(max_delta=0.1, workspace_low=[0] * 3, workspace_high=[1] * 3)
    fine = dict(obs_stamp=0.0, ee_pos=[0.5] * 3, joint_pos=[0.1] * 3)
    layer.observe(**fine, now=0.0)
    safe = layer.filter([0.1, 0.1, 0.1], now=0.01)
    layer.observe(**{**fine, "obs_stamp": 0.02, **bad}, now=0.02)
    for t in (0.03, 0.04):
        np.testing.assert_array_equal(layer.filter([0.5, 0.5, 0.5], now=t), safe)
    assert layer.state_at(0.04) == "nonfinite"
    assert [e.rule for e in events] == ["nonfinite"]  # recorded once, when the hold starts
    assert shown in events[0].reason and events[0].reason.endswith(": hold")
    layer.observe(**{**fine, "obs_stamp": 0.05}, now=0.05)  # finite again: moves on
    np.testing.assert_allclose(layer.filter([0.5, 0.5, 0.5], now=0.06), [0.2, 0.2, 0.2])


def test_nan_joint_position_before_the_first_command_sends_nothing():
    layer, events = make_layer(action_low=[-1, -1], action_high=[1, 1], max_delta=0.1)
    layer.observe(0.0, joint_pos=[np.nan, 0.0], now=0.0)
    assert layer.filter([0.5, 0.5], now=0.01) is None  # not [nan, 0.1]
    assert events[-1].rule == "nonfinite" and "joint_pos[0]=nan" in events[-1].reason


@pytest.mark.parametrize("kwargs, message", [
    (dict(action_low=[0, 2], action_high=[1, 1]), "action_low > action_high at index [1]"),
    (dict(action_low=[0, 0], action_high=[1, 1, 1]), "action_high must be shape (2,)"),
    (dict(action_low=[0], action_high=[1], joint_low=[0, 0], joint_high=[1, 1]), "leading"),
    (dict(action_low=[0], action_high=[1], max_delta=0.0), "max_delta must be > 0"),
    (dict(action_low=[0], action_high=[1], hold_mode="freeze"), "hold_mode"),
    (dict(action_low=[0], action_high=[1], workspace_low=[0, 0]), "both workspace"),
    (dict(action_low=[0, 0], action_high=[1, 1], workspace_low=[0, 0, 0],
          workspace_high=[1, 1, 1], workspace_action_dims=(0, 1, 2)), "workspace_action_dims"),
    (dict(action_low=[0], action_high=[1], stale_after_s=0), "stale_after_s must be > 0"),
])
def test_config_errors_name_the_problem(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SafetyConfig(**kwargs)


def test_keyboard_estop_is_a_noop_without_a_terminal():
    layer, _ = make_layer()
    read_end, write_end = os.pipe()
    try:
        assert KeyboardEstop(layer, fd=read_end).start() is False
    finally:
        os.close(read_end)
        os.close(write_end)


def test_keyboard_estop_latches_on_key():
    pytest.importorskip("termios")
    layer, _ = make_layer()
    master, slave = os.openpty()
    watcher = KeyboardEstop(layer, fd=slave)
    try:
        assert watcher.start() is True
        os.write(master, b"e")
        deadline = time.monotonic() + 3.0
        while layer.state_at(0.0) != "estopped" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert layer.state_at(0.0) == "estopped"
        assert "key 'e' pressed" in layer.interventions[-1].reason
    finally:
        watcher.stop()
        os.close(master)
        os.close(slave)


def test_hold_before_any_command_tracks_the_joints():
    layer, _ = make_layer(max_delta=0.1)
    layer.observe(0.0, joint_pos=[0.1, 0.1, 0.1], now=0.0)
    assert layer.filter([0.5, 0.5, 0.5], now=0.5) is not None  # stale: holds, not remembered
    layer.observe(0.5, joint_pos=[0.4, 0.4, 0.4], now=0.5)
    np.testing.assert_allclose(layer.filter([0.5, 0.5, 0.5], now=0.51), [0.5, 0.5, 0.5])
