"""Play action chunks on a robot at a fixed control rate.

A policy predicts a chunk of T actions (T, D) from one observation, and inference takes
time: by the time the chunk arrives the robot has moved on. The executor's step counter
advances once per control period; the policy reads `step_index` (and the clock) when it
grabs the observation and tags the chunk with them (`obs_step`, `obs_time`). Row i of the
chunk is meant for step obs_step + i. Rows whose step has passed are dropped
(`stale_dropped`), as is a whole chunk that arrives after one from a newer observation; the
rest are scheduled from the current step and merged with what is already scheduled:

    replace   the new chunk replaces the whole plan (old steps it does not cover are dropped)
    ensemble  ACT temporal ensembling: every prediction for a step is kept, and the action
              sent is their average weighted exp(-decay * i), i = 0 the oldest (as in ACT,
              the oldest prediction weighs most; decay 0 is a plain mean)
    weighted  where both cover a step: new * w + old * (1 - w); elsewhere whichever covers it

Timing: step k's deadline is t0 + k * period (absolute, so no drift). A step that finishes
after the next deadline is a deadline miss; the loop then skips the periods it missed (their
actions are dropped as stale) rather than sending them in a burst, so the step counter stays
tied to wall time and chunk tags stay right.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from embodied.core.errors import ConfigError, RobotError
from embodied.sim2real.safety import SafetyLayer

logger = logging.getLogger("embodied.sim2real.executor")

MERGES = ("replace", "ensemble", "weighted")


class ChunkExecutor:
    """Fixed-rate control loop for action chunks; run it on a thread or step it by hand.

    Each period: take the action scheduled for this step (merged per `merge`), pass it
    through `safety.filter`, and `send` it. With nothing scheduled the robot holds
    (`starved`): the last command is repeated, or with a safety layer its watchdog/hold
    command is sent. Before the first chunk nothing is sent at all, nor when the safety
    layer has nothing to send (a hold before any command with no measured position).
    If `send` or the safety layer raises, the thread stops: `check` and `stop` raise a
    RobotError naming the cause, so the loop feeding chunks does not wait forever.
    """

    def __init__(self, send: Callable[[np.ndarray], Any], rate_hz: float,
                 merge: str = "replace", ensemble_decay: float = 0.01,
                 weighted_new: float = 0.5, safety: SafetyLayer | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = time.sleep,
                 stats_window: int = 10_000) -> None:
        if not callable(send):
            raise ConfigError(f"send must be callable, got {type(send).__name__}")
        if not 0 < rate_hz <= 1000:
            raise ConfigError(f"rate_hz must be in (0, 1000], got {rate_hz}")
        if merge not in MERGES:
            raise ConfigError(f"merge must be one of {MERGES}, got {merge!r}")
        if not ensemble_decay >= 0:
            raise ConfigError(f"ensemble_decay must be >= 0, got {ensemble_decay}")
        if not 0 < weighted_new <= 1:
            raise ConfigError(f"weighted_new must be in (0, 1], got {weighted_new}")
        self._send = send
        self._period = 1.0 / rate_hz
        self._merge = merge
        self._decay = ensemble_decay
        self._w_new = weighted_new
        self._safety = safety
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._dim: int | None = None if safety is None else safety.config.dim
        self._plan: dict[int, list[np.ndarray]] = {}  # step -> predictions, oldest first
        self._step = 0
        self._newest_obs_step = 0
        self._t0: float | None = None
        self._last_sent: np.ndarray | None = None
        self._counts = {"sent": 0, "stale_dropped": 0, "starved": 0, "deadline_misses": 0}
        self._jitter: deque[float] = deque(maxlen=stats_window)
        self._latency: deque[float] = deque(maxlen=stats_window)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None

    @property
    def step_index(self) -> int:
        """The next control step to run: read it when grabbing the observation."""
        with self._lock:
            return self._step

    @property
    def running(self) -> bool:
        return self._thread is not None

    def submit(self, chunk: np.ndarray, obs_step: int, obs_time: float | None = None) -> int:
        """Schedule `chunk` (T, D), predicted from the observation taken at `obs_step`
        (`step_index` then) and at `obs_time` (this executor's clock then; with it, the chunk's
        latency is recorded). Returns how many of its actions were dropped: those whose step
        has passed, or all of them when a chunk from a newer observation was already
        submitted (out of order)."""
        actions = np.array(chunk, dtype=np.float64)  # a copy: the caller may reuse its buffer
        obs_step = operator.index(obs_step)
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise ValueError(f"chunk must have shape (T, D) with T >= 1, got {actions.shape}")
        with self._lock:
            if self._dim is None:
                self._dim = actions.shape[1]
            if actions.shape[1] != self._dim:
                raise ValueError(f"chunk has action dim {actions.shape[1]}, expected {self._dim}")
            now_step = self._step
            if not 0 <= obs_step <= now_step:
                raise ValueError(f"obs_step={obs_step} is not in [0, {now_step}] (the current "
                                 f"step): read step_index when grabbing the observation")
            if obs_time is not None:
                self._latency.append(self._clock() - float(obs_time))
            if obs_step < self._newest_obs_step:  # overtaken by a newer chunk: drop it all
                stale = actions.shape[0]
            else:
                stale = min(now_step - obs_step, actions.shape[0])
                self._newest_obs_step = obs_step
            self._counts["stale_dropped"] += stale
            if stale < actions.shape[0]:
                self._schedule(actions[stale:], now_step)
            return stale

    def run_steps(self, n: int) -> None:
        """Run n control periods on the calling thread (same loop as the thread; with an
        injected clock and sleep it is deterministic, which is what tests use)."""
        if self._thread is not None:
            raise RuntimeError("the executor thread is running: stop() it before run_steps")
        self._run(n)

    def start(self) -> None:
        """Run the control loop on a daemon thread until `stop`."""
        if self._thread is not None:
            raise RuntimeError("the executor is already running")
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._thread_main, name="ChunkExecutor",
                                        daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise (as `stop` does) if the thread died; a no-op while it runs. Call it from the
        loop that feeds chunks: its step counter stopped, so it would wait forever."""
        if self._thread is not None and self._error is not None:
            self.stop()

    def stop(self) -> None:
        """Stop and join the thread; raise a RobotError if `send` or safety raised in it."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RobotError(
                f"the control loop stopped at step {self.step_index - 1}: "
                f"{type(error).__name__}: {error}. No command is sent any more; if the "
                "transport failed, check the link to the robot") from error

    def __enter__(self) -> ChunkExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, float]:
        """Counts, loop jitter and chunk latency in ms (NaN before any sample).

        steps: control periods elapsed, skipped ones included (= step_index).
        jitter: wake time - deadline. latency: submit time - obs_time, how long the chunk
        took from its observation (inference, for a chunk submitted at once); only chunks
        submitted with an obs_time count. (Not measured from a step's deadline: the
        observation is read between deadlines, after step obs_step - 1 and before step
        obs_step, so neither deadline is when it was taken.)"""
        with self._lock:
            out: dict[str, float] = {"steps": self._step, **self._counts}
            jitter, latency = np.array(self._jitter), np.array(self._latency)

        def ms(values: np.ndarray, q: float) -> float:
            return float(np.percentile(values, q) * 1e3) if values.size else float("nan")

        out.update(jitter_ms_p50=ms(jitter, 50), jitter_ms_p99=ms(jitter, 99),
                   jitter_ms_max=ms(jitter, 100), latency_ms_p50=ms(latency, 50),
                   latency_ms_p99=ms(latency, 99))
        return out

    # --- internals --------------------------------------------------------------------------

    def _deadline(self, step: int) -> float:
        assert self._t0 is not None
        return self._t0 + step * self._period

    def _schedule(self, actions: np.ndarray, start: int) -> None:
        if self._merge == "replace":
            self._plan = {}
        for i, action in enumerate(actions):
            old = self._plan.get(start + i)
            if old is None:
                self._plan[start + i] = [action]
            elif self._merge == "ensemble":
                old.append(action)
            else:  # weighted
                self._plan[start + i] = [self._w_new * action + (1 - self._w_new) * old[0]]

    def _combine(self, predictions: list[np.ndarray]) -> np.ndarray:
        if len(predictions) == 1:
            return predictions[0]
        weights = np.exp(-self._decay * np.arange(len(predictions)))
        return weights @ np.stack(predictions) / weights.sum()

    def _thread_main(self) -> None:
        try:
            self._run(None)
        except BaseException as error:  # kept for stop() to re-raise on the caller's thread
            self._error = error
            logger.exception("control loop stopped")

    def _run(self, n: int | None) -> None:
        with self._lock:
            now = self._clock()
            if self._t0 is None or now > self._deadline(self._step):
                # First run, or resumed after a pause: the pause is not a deadline miss.
                self._t0 = now - self._step * self._period
            deadline = self._deadline(self._step)
        done = 0
        while (n is None or done < n) and not self._stop.is_set():
            now = self._clock()
            if now < deadline:
                self._sleep(deadline - now)
                now = self._clock()
            deadline = self._one_step(now - deadline)
            done += 1

    def _one_step(self, jitter: float) -> float:
        """Run the current step; return the next step's deadline."""
        with self._lock:
            step = self._step
            self._step = step + 1
            predictions = self._plan.pop(step, None)
            action = None if predictions is None else self._combine(predictions)
            last = self._last_sent
        starved = action is None and last is not None
        command = self._command(action, last)
        if command is not None:
            self._send(command)
        end = self._clock()
        with self._lock:
            self._jitter.append(jitter)
            if command is not None:
                self._last_sent = command
                self._counts["sent"] += 1
            self._counts["starved"] += starved
            if end > self._deadline(step + 1):
                self._counts["deadline_misses"] += 1
                resume = max(self._step, int((end - self._t0) // self._period) + 1)
                for skipped in range(self._step, resume):
                    self._counts["stale_dropped"] += self._plan.pop(skipped, None) is not None
                self._step = resume
            return self._deadline(self._step)

    def _command(self, action: np.ndarray | None, last: np.ndarray | None) -> np.ndarray | None:
        if action is not None:
            return action if self._safety is None else self._safety.filter(action)
        if last is None:  # no chunk yet: nothing to hold
            return None
        if self._safety is None:
            return last
        held = self._safety.tick()
        return held if held is not None else self._safety.hold()
