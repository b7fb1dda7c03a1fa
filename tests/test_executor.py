"""Chunk scheduling, merging and timing of the control loop, on a fake clock."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from embodied.core.errors import ConfigError, RobotError
from embodied.sim2real.executor import ChunkExecutor
from embodied.sim2real.safety import SafetyConfig, SafetyLayer

STATS_KEYS = {"steps", "sent", "stale_dropped", "starved", "deadline_misses", "jitter_ms_p50",
              "jitter_ms_p99", "jitter_ms_max", "latency_ms_p50", "latency_ms_p99"}


class FakeClock:
    """Time that moves only when the loop sleeps (or a test's send says so)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_executor(rate_hz: float = 10.0, **kwargs) -> tuple[ChunkExecutor, list[float], FakeClock]:
    """A 1-dim executor on a fake clock; returns it, the values it sent, and the clock."""
    clock = FakeClock()
    sent: list[float] = []
    executor = ChunkExecutor(lambda a: sent.append(float(a[0])), rate_hz, clock=clock,
                             sleep=clock.sleep, **kwargs)
    return executor, sent, clock


def col(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)[:, None]


def test_stale_actions_are_dropped_by_count():
    executor, sent, _ = make_executor()
    executor.submit(col(0, 1, 2, 3, 4), obs_step=0)
    executor.run_steps(3)
    obs_step = executor.step_index  # the policy grabs an observation at step 3 ...
    executor.run_steps(2)           # ... and its chunk arrives two periods later
    assert executor.submit(col(10, 11, 12, 13, 14), obs_step=obs_step) == 2
    executor.run_steps(3)
    assert sent == [0, 1, 2, 3, 4, 12, 13, 14]
    assert executor.stats()["stale_dropped"] == 2


def test_replace_drops_the_old_plan_and_starvation_holds_the_last_action():
    executor, sent, _ = make_executor(merge="replace")
    executor.submit(col(0, 1, 2, 3), obs_step=0)
    executor.run_steps(1)
    executor.submit(col(10, 11), obs_step=1)
    executor.run_steps(4)
    assert sent == [0, 10, 11, 11, 11]  # old steps 3, 4 are gone; then hold 11
    assert executor.stats()["starved"] == 2


def test_ensemble_weights_the_oldest_prediction_most():
    executor, sent, _ = make_executor(merge="ensemble", ensemble_decay=0.5)
    executor.submit(col(0, 1, 2, 3), obs_step=0)
    executor.run_steps(1)
    executor.submit(col(10, 20, 30, 40), obs_step=1)
    executor.run_steps(1)
    executor.submit(col(100, 200, 300, 400), obs_step=2)
    executor.run_steps(5)
    w = math.exp(-0.5)  # weights 1, w, w^2 for the oldest, next, newest prediction
    expected = [0,
                (1 + 10 * w) / (1 + w),                        # step 1: A[1], B[0]
                (2 + 20 * w + 100 * w**2) / (1 + w + w**2),    # step 2: A[2], B[1], C[0]
                (3 + 30 * w + 200 * w**2) / (1 + w + w**2),    # step 3: A[3], B[2], C[1]
                (40 + 300 * w) / (1 + w),                      # step 4: B[3], C[2]
                400, 400]                                      # step 5: C[3]; then starved
    np.testing.assert_allclose(sent, expected)


def test_weighted_blends_new_and_old_over_the_overlap():
    executor, sent, _ = make_executor(merge="weighted", weighted_new=0.25)
    executor.submit(col(0, 1, 2, 3), obs_step=0)
    executor.run_steps(1)
    executor.submit(col(10, 20, 30, 40), obs_step=1)
    executor.run_steps(4)
    # 0.25 * new + 0.75 * old: 0.25*10 + 0.75*1, 0.25*20 + 0.75*2, 0.25*30 + 0.75*3; then 40.
    np.testing.assert_allclose(sent, [0, 3.25, 6.5, 9.75, 40])


def test_chunk_tags_and_latency():
    executor, sent, clock = make_executor(rate_hz=10.0)
    executor.run_steps(3)
    assert sent == [] and executor.step_index == 3  # nothing to send or hold before a chunk
    assert executor.stats()["starved"] == 0
    with pytest.raises(ValueError, match="obs_step=4"):
        executor.submit(col(1), obs_step=4)  # from the future
    # Row i is for step obs_step + i: tagged 1 at step 3, rows 0, 1 are stale, 2 goes now.
    assert clock.now == pytest.approx(0.2)  # step 2 ran at t=0.2
    assert executor.submit(col(1, 2, 3, 4), obs_step=1, obs_time=0.05) == 2
    # A wholly stale chunk, and one overtaken by a newer observation, leave the plan alone.
    assert executor.submit(col(7, 8), obs_step=1, obs_time=0.05) == 2
    assert executor.submit(col(7, 8, 9, 10, 11), obs_step=0) == 5  # no obs_time: no latency
    executor.run_steps(2)
    assert sent == [3, 4]
    stats = executor.stats()
    assert stats["stale_dropped"] == 9 and stats["steps"] == 5
    # Latencies: 0.2 - 0.05 twice.
    np.testing.assert_allclose([stats["latency_ms_p50"]], [150.0])


def test_latency_is_measured_from_the_observation_so_never_negative():
    executor, _, clock = make_executor(rate_hz=10.0)
    executor.submit(col(0, 0, 0), obs_step=0)
    executor.run_steps(2)  # steps 0 and 1 at t = 0 and 0.1
    clock.now = 0.13  # the observation is taken between deadlines ...
    obs_step, obs_time = executor.step_index, clock()
    clock.now = 0.15  # ... and its chunk is in 20 ms later, before step 2's deadline (0.2)
    executor.submit(col(1, 1), obs_step, obs_time)
    stats = executor.stats()
    assert stats["latency_ms_p50"] == pytest.approx(20.0)  # not 0.15 - 0.2 = -50 ms
    assert stats["latency_ms_p99"] == pytest.approx(20.0)


def test_a_send_that_raises_stops_the_loop_with_a_clear_error():
    def send(action: np.ndarray) -> None:
        raise ConnectionError("link down")

    executor = ChunkExecutor(send, 100.0)
    executor.submit(np.zeros((10, 1)), obs_step=0)
    executor.start()
    deadline = time.monotonic() + 5.0
    with pytest.raises(RobotError, match="control loop stopped at step 0: ConnectionError: "
                                         "link down"):
        while time.monotonic() < deadline:  # the feeding loop polls check() each round
            executor.check()
            time.sleep(0.01)
    assert not executor.running and executor.stats()["sent"] == 0
    executor.stop()  # already stopped: nothing more to raise


def test_deadline_miss_skips_periods_instead_of_bursting():
    clock = FakeClock()
    sent: list[float] = []

    def slow_send(action: np.ndarray) -> None:
        sent.append(float(action[0]))
        if action[0] == 1:
            clock.now += 0.25  # finishes after step 2's and step 3's deadlines

    executor = ChunkExecutor(slow_send, 10.0, clock=clock, sleep=clock.sleep)
    executor.submit(col(*range(8)), obs_step=0)
    executor.run_steps(3)
    assert sent == [0, 1, 4]
    stats = executor.stats()
    assert stats["deadline_misses"] == 1 and stats["stale_dropped"] == 2
    assert stats["steps"] == 5 and stats["jitter_ms_max"] == pytest.approx(0.0, abs=1e-6)


def test_safety_layer_filters_and_holds():
    clock = FakeClock()
    safety = SafetyLayer(SafetyConfig([-1.0, -1.0], [1.0, 1.0], hold_mode="zero"),
                         clock=clock)
    sent: list[np.ndarray] = []
    executor = ChunkExecutor(sent.append, 10.0, safety=safety, clock=clock, sleep=clock.sleep)
    safety.observe(0.0)
    executor.submit(np.array([[2.0, 0.5], [0.5, 0.5]]), obs_step=0)
    executor.run_steps(3)
    np.testing.assert_array_equal(np.stack(sent), [[1.0, 0.5], [0.5, 0.5], [0.0, 0.0]])
    assert [e.rule for e in safety.interventions] == ["action_limit"]
    assert executor.stats()["starved"] == 1


def test_stats_keys_and_argument_errors():
    executor, _, _ = make_executor()
    stats = executor.stats()
    assert set(stats) == STATS_KEYS and math.isnan(stats["jitter_ms_p50"])
    with pytest.raises(ConfigError, match="merge"):
        make_executor(merge="average")
    with pytest.raises(ConfigError, match="rate_hz"):
        make_executor(rate_hz=0)
    with pytest.raises(ConfigError, match="weighted_new"):
        make_executor(weighted_new=1.5)
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        executor.submit(np.zeros(3), obs_step=0)
    executor.submit(np.zeros((2, 1)), obs_step=0)
    with pytest.raises(ValueError, match="action dim 2"):
        executor.submit(np.zeros((2, 2)), obs_step=0)


def test_real_thread_at_100hz():
    sent: list[np.ndarray] = []
    executor = ChunkExecutor(sent.append, 100.0)
    executor.submit(np.zeros((100, 2)), obs_step=0)
    with executor:
        time.sleep(0.3)
        executor.submit(np.ones((100, 2)), executor.step_index, time.monotonic())
        time.sleep(0.05)
    stats = executor.stats()
    assert set(stats) == STATS_KEYS
    assert stats["sent"] >= 10 and stats["sent"] == len(sent)
    assert math.isfinite(stats["jitter_ms_p99"]) and stats["latency_ms_p50"] >= 0
    assert stats["deadline_misses"] <= 2  # a loaded 2-core machine may miss one or two
    assert not executor.running
