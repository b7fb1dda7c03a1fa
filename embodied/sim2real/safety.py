"""Safety layer between a policy and a robot, independent of the transport.

Every command goes through `SafetyLayer.filter` before it is sent, and the control loop calls
`SafetyLayer.tick` once per period so that a policy that goes silent still ends in a hold.
Rules, in the order `filter` applies them:

    estop, disconnect                                                            -> hold
    nonfinite (NaN or inf in the observation: stamp, ee_pos, joint_pos, state)   -> hold
    stale (no observation yet, too old, or stamped in the future)                -> hold
    workspace (reported end effector outside the box)                            -> hold
    stale (max_delta, nothing sent yet, and no measured position: see below)     -> hold
    nonfinite (NaN or inf in the action)                                         -> hold
    action_limit, joint_limit, workspace_target                                  -> clip
    max_delta (change from the last command sent)                                -> cap
    watchdog (no `filter` call within watchdog_s; checked by `tick`)             -> hold
Comparisons are written so that a NaN fails them (holds), besides the explicit check.

What "hold" sends (`hold_action`), and where max_delta starts:
    hold_mode="zero": zeros, for velocity-controlled robots (zero is "stop"; the first
    command ramps up from it). A measured position is not a velocity command: ignored.
    hold_mode="hold_position": the last command sent. Before any command, the measured
    position (`observe(joint_pos=...)`: leading action dims, in action units), clipped into
    the limits; max_delta caps the first command's change from it. A position-controlled
    robot has no safe default target, so while any held dim has no measured position and
    nothing was sent, a hold returns None (send nothing) and with max_delta every command
    holds ("stale": no measured position yet).
    hold_zero_dims: with hold_position, these dims hold at zero instead and need no measured
    position (velocity-like: zero stops). For mixed actions, e.g. end-effector deltas next to
    an absolute gripper command (repeating it keeps a grasp).

Time: every method takes `now`, seconds on the layer's clock (`time.monotonic` unless another
clock is given). Observation stamps must be on that same clock: stamp arrival time with it,
not the robot's own clock. A stamp from the future is treated as stale, which catches the
usual mix-up of `time.time()` with `time.monotonic()`.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from embodied.core.errors import ConfigError

logger = logging.getLogger("embodied.sim2real.safety")

HOLD_MODES = ("hold_position", "zero")
HOLD_RULES = ("estop", "disconnect", "stale", "workspace", "nonfinite", "watchdog")
CLIP_RULES = ("action_limit", "joint_limit", "workspace_target", "max_delta")
# Rule that holds the robot -> the `state` it reports.
_STATE_OF_RULE = {"estop": "estopped", "disconnect": "disconnected", "stale": "stale",
                  "nonfinite": "nonfinite", "workspace": "workspace", "watchdog": "watchdog"}
_AXES = "xyz"


def _vector(name: str, value: object, dim: int | None = None) -> np.ndarray:
    arr = np.array(value, dtype=np.float64)
    if arr.ndim != 1 or (dim is not None and arr.shape[0] != dim):
        want = f"shape ({dim},)" if dim is not None else "a 1-D array"
        raise ConfigError(f"{name} must be {want}, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ConfigError(f"{name} contains NaN: {arr}")
    return arr


def _nonfinite(**parts: object) -> list[str]:
    """The NaN/inf values among `parts` (None: not given), as "name[i]=nan" strings."""
    found = []
    for name, value in parts.items():
        if value is None:
            continue
        flat = np.asarray(value, dtype=np.float64).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(flat))
        scalar = np.ndim(value) == 0
        found += [f"{name if scalar else f'{name}[{i}]'}={flat[i]}" for i in bad[:4]]
        if bad.size > 4:
            found.append(f"{bad.size - 4} more in {name}")
    return found


def _box(name: str, low: object, high: object, dim: int | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    low_arr = _vector(f"{name}_low", low, dim)
    high_arr = _vector(f"{name}_high", high, low_arr.shape[0])
    bad = np.flatnonzero(low_arr > high_arr)
    if bad.size:
        raise ConfigError(f"{name}_low > {name}_high at index {bad.tolist()}: "
                          f"{low_arr[bad].tolist()} > {high_arr[bad].tolist()}")
    return low_arr, high_arr


def _indices(name: str, value: Iterable[int], dim: int) -> tuple[int, ...]:
    out = tuple(int(i) for i in value)
    if not all(0 <= i < dim for i in out):
        raise ConfigError(f"{name} must be indices in [0, {dim}), got {list(out)}")
    return out


@dataclass
class SafetyConfig:
    """Limits and timeouts; arrays are converted to float64 and checked on construction."""

    action_low: np.ndarray
    """Per-dim lower action limit, shape (D,); -inf for an unbounded dim."""
    action_high: np.ndarray
    """Per-dim upper action limit, shape (D,)."""
    joint_low: np.ndarray | None = None
    """Joint position limits, shape (J,) with J <= D, for position-command actions. They
    apply to the first J action dims (joints first, then e.g. a gripper)."""
    joint_high: np.ndarray | None = None
    max_delta: float | np.ndarray | None = None
    """Largest change of a command from the last one sent, scalar or shape (D,); > 0."""
    workspace_low: np.ndarray | None = None
    """Cartesian box, shape (3,). The robot holds while its reported end effector is outside;
    it stays held until it is reported inside again (move it back by hand or teleop)."""
    workspace_high: np.ndarray | None = None
    workspace_action_dims: tuple[int, int, int] | None = None
    """Indices of an xyz end-effector target inside the action; that target is clipped into
    the box. None: the action is not a Cartesian target, only the reported position counts."""
    stale_after_s: float = 0.2
    """An observation older than this holds the robot: the policy would act on the past."""
    watchdog_s: float = 0.5
    """No command within this: `tick` returns the hold command."""
    hold_mode: str = "hold_position"
    """"hold_position" (resend the last safe command) or "zero" (velocity robots)."""
    hold_zero_dims: tuple[int, ...] | None = None
    """With hold_position: action dims held at zero (delta or velocity dims of a mixed
    action); the other dims repeat the last command."""

    def __post_init__(self) -> None:
        self.action_low, self.action_high = _box("action", self.action_low, self.action_high)
        dim = self.dim
        if (self.joint_low is None) != (self.joint_high is None):
            raise ConfigError("give both joint_low and joint_high, or neither")
        if self.joint_low is not None:
            self.joint_low, self.joint_high = _box("joint", self.joint_low, self.joint_high)
            if self.joint_low.shape[0] > dim:
                raise ConfigError(f"joint limits have {self.joint_low.shape[0]} dims but the "
                                  f"action has only {dim}: they apply to the leading dims")
        if self.max_delta is not None:
            delta = np.array(self.max_delta, dtype=np.float64)
            if delta.ndim == 0:
                delta = np.full(dim, float(delta))
            delta = _vector("max_delta", delta, dim)
            if (delta <= 0).any():
                raise ConfigError(f"max_delta must be > 0, got {delta.tolist()}")
            self.max_delta = delta
        if (self.workspace_low is None) != (self.workspace_high is None):
            raise ConfigError("give both workspace_low and workspace_high, or neither")
        if self.workspace_low is not None:
            self.workspace_low, self.workspace_high = _box(
                "workspace", self.workspace_low, self.workspace_high, 3)
        if self.workspace_action_dims is not None:
            dims = tuple(int(i) for i in self.workspace_action_dims)
            if self.workspace_low is None:
                raise ConfigError("workspace_action_dims needs workspace_low/workspace_high")
            if len(dims) != 3 or len(set(dims)) != 3 or not all(0 <= i < dim for i in dims):
                raise ConfigError(f"workspace_action_dims must be 3 distinct indices in "
                                  f"[0, {dim}), got {self.workspace_action_dims}")
            self.workspace_action_dims = dims  # type: ignore[assignment]
        for name in ("stale_after_s", "watchdog_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        self._check_hold()

    def _check_hold(self) -> None:
        if self.hold_mode not in HOLD_MODES:
            raise ConfigError(f"hold_mode must be one of {HOLD_MODES}, got {self.hold_mode!r}")
        if self.hold_zero_dims is not None:
            self.hold_zero_dims = _indices("hold_zero_dims", self.hold_zero_dims, self.dim)

    @property
    def dim(self) -> int:
        """Action dimension D."""
        return int(self.action_low.shape[0])

    def position_dims(self) -> tuple[int, ...]:
        """Dims a hold repeats: they need a measured position before the first command (all
        but hold_zero_dims with hold_position; none with hold_mode zero)."""
        if self.hold_mode == "zero":
            return ()
        return tuple(i for i in range(self.dim) if i not in (self.hold_zero_dims or ()))


@dataclass(frozen=True)
class Intervention:
    """One time the safety layer changed or replaced a command, or changed its own state."""

    time: float
    rule: str
    reason: str
    before: np.ndarray | None
    after: np.ndarray | None


class SafetyLayer:
    """Filters every command; thread-safe (transport, control loop and e-stop threads).

    Each intervention is appended to `interventions` (bounded) and passed to `log`. The
    Python logger ("embodied.sim2real.safety", WARNING) gets every hold and state change, but at
    most one clip/cap line per rule per second, so a policy clipped at 100 Hz does not flood
    it. A hold is recorded once when it starts, not on every period it lasts.
    """

    def __init__(self, config: SafetyConfig, log: Callable[[Intervention], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 max_interventions: int = 1000) -> None:
        self.config = config
        self.interventions: deque[Intervention] = deque(maxlen=max_interventions)
        self._log = log
        self._clock = clock
        self._lock = threading.RLock()
        self._estop_reason: str | None = None
        self._disconnected = False
        self._obs_stamp: float | None = None
        self._ee_pos: np.ndarray | None = None
        self._joint_pos: np.ndarray | None = None
        self._obs_nonfinite: list[str] = []  # NaN/inf values of the latest observation
        self._last_sent: np.ndarray | None = None
        self._last_command_at: float | None = None
        self._holding: str | None = None  # cause of the hold in progress, recorded once
        self._last_logged: dict[str, float] = {}
        cfg = config
        self._clips: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]] = [
            ("action_limit", "action limit", np.arange(cfg.dim), cfg.action_low, cfg.action_high)]
        if cfg.joint_low is not None:
            self._clips.append(("joint_limit", "joint limit", np.arange(cfg.joint_low.shape[0]),
                                cfg.joint_low, cfg.joint_high))
        if cfg.workspace_action_dims is not None:
            self._clips.append(("workspace_target", "workspace box",
                                np.array(cfg.workspace_action_dims), cfg.workspace_low,
                                cfg.workspace_high))

    # --- inputs -----------------------------------------------------------------------------

    def observe(self, obs_stamp: float, ee_pos: np.ndarray | None = None,
                joint_pos: np.ndarray | None = None, state: np.ndarray | None = None,
                now: float | None = None) -> None:
        """Record the latest observation; each argument replaces the previous one, None
        means "not reported". `ee_pos` (3,): the end effector, for the workspace check.
        `joint_pos` (J <= D,): the measured position of the leading J action dims, in action
        units; a hold before the first command holds it and max_delta starts from it.
        `state` (any shape): the rest of what the policy reads, only checked for NaN/inf.
        A NaN or inf anywhere (the stamp too) holds the robot until a finite observation."""
        ee = None if ee_pos is None else np.array(ee_pos, dtype=np.float64)
        joints = None if joint_pos is None else np.array(joint_pos, dtype=np.float64)
        if ee is not None and ee.shape != (3,):
            raise ValueError(f"ee_pos must have shape (3,), got {ee.shape}")
        if joints is not None and (joints.ndim != 1 or joints.shape[0] > self.config.dim):
            raise ValueError(f"joint_pos must be 1-D with at most {self.config.dim} dims, "
                             f"got shape {joints.shape}")
        bad = _nonfinite(stamp=obs_stamp, ee_pos=ee, joint_pos=joints, state=state)
        if joints is not None and not np.isfinite(joints).all():
            joints = None  # a NaN is no position to hold at or to start max_delta from
        with self._lock:
            self._obs_stamp = float(obs_stamp)
            self._ee_pos, self._joint_pos, self._obs_nonfinite = ee, joints, bad

    def filter(self, action: np.ndarray, now: float | None = None) -> np.ndarray | None:
        """Return the command actually to send for the policy's `action` (D,); None: send
        nothing (a hold before any command, with no measured position to hold at)."""
        now = self._now(now)
        proposed = np.array(action, dtype=np.float64)
        if proposed.shape != (self.config.dim,):
            raise ValueError(f"action must have shape ({self.config.dim},), "
                             f"got {proposed.shape}")
        with self._lock:
            self._last_command_at = now
            hold = self._hold_reason(now)
            if hold is None and not np.isfinite(proposed).all():
                bad = np.flatnonzero(~np.isfinite(proposed)).tolist()
                hold = ("nonfinite", "nonfinite", f"action has NaN or inf at {bad}")
            if hold is not None:
                rule, cause, reason = hold
                out = self._hold_locked()
                if self._holding != cause:
                    self._record(now, rule, f"{reason}: {self._hold_note(out)}", proposed, out,
                                 throttle=False)
                self._holding = cause
                if out is not None:
                    self._held(out)
            else:
                self._holding = None
                out = self._limit(proposed, now)
                self._last_sent = out.copy()
            return out

    def tick(self, now: float | None = None) -> np.ndarray | None:
        """Call once per control period. Returns the hold command when no command came
        within watchdog_s, else None. The watchdog is armed by the first `filter` call:
        before it there is nothing to hold (nor while a hold has nothing to hold at)."""
        now = self._now(now)
        with self._lock:
            if self._last_command_at is None:
                return None
            silent = now - self._last_command_at
            if silent <= self.config.watchdog_s:
                return None
            out = self._hold_locked()
            if out is None:
                return None
            if self._holding != "watchdog":
                self._record(now, "watchdog", f"no command for {silent:.3f}s (watchdog "
                             f"{self.config.watchdog_s}s): hold", None, out, throttle=False)
                self._holding = "watchdog"
            self._held(out)
            return out

    def hold(self, now: float | None = None) -> np.ndarray | None:
        """The hold command, recorded as sent (a later `max_delta` cap starts from it); None
        when there is nothing to hold at (see `hold_action`). For control loops that have
        nothing new to send; not an intervention, not logged."""
        with self._lock:
            out = self._hold_locked()
            if out is not None:
                self._held(out)
            return out

    def hold_action(self) -> np.ndarray | None:
        """The hold command (see the module docstring); changes nothing. None: nothing was
        sent yet and a held dim has no measured position, so there is no safe target."""
        with self._lock:
            return self._hold_locked()

    # --- e-stop and connection --------------------------------------------------------------

    def estop(self, reason: str = "e-stop requested", now: float | None = None) -> None:
        """Latch the e-stop: every `filter` returns the hold until `reset_estop`. The
        callback target for a keyboard, topic or hardware e-stop; safe from any thread."""
        now = self._now(now)
        with self._lock:
            if self._estop_reason is not None:
                return  # already latched: e-stop topics repeat at a rate, log it once
            self._estop_reason = reason
            self._holding = "estop"
            self._record(now, "estop", f"e-stop latched: {reason}", None, None, throttle=False)

    def reset_estop(self, now: float | None = None) -> bool:
        """Clear a latched e-stop; True if one was latched. Nothing else ever clears it."""
        now = self._now(now)
        with self._lock:
            if self._estop_reason is None:
                return False
            self._record(now, "estop", f"e-stop reset (was: {self._estop_reason})", None, None,
                         throttle=False)
            self._estop_reason = None
            self._holding = "disconnect" if self._disconnected else None
            return True

    def on_disconnect(self, reason: str = "transport disconnected",
                      now: float | None = None) -> None:
        """Hold until `on_reconnect`: commands may not reach the robot, observations are old."""
        now = self._now(now)
        with self._lock:
            self._disconnected = True
            self._holding = "disconnect"
            self._record(now, "disconnect", f"{reason}: hold", None, None, throttle=False)

    def on_reconnect(self, now: float | None = None) -> None:
        """Allow commands again (a fresh observation is still needed: see `stale`)."""
        now = self._now(now)
        with self._lock:
            if self._disconnected:
                self._record(now, "disconnect", "reconnected", None, None, throttle=False)
            self._disconnected = False
            self._holding = "estop" if self._estop_reason is not None else None

    # --- status -----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """One of "ok", "estopped", "disconnected", "stale", "nonfinite", "workspace",
        "watchdog"."""
        return self.state_at()

    def state_at(self, now: float | None = None) -> str:
        """`state` at a given time (for tests and replay)."""
        now = self._now(now)
        with self._lock:
            hold = self._hold_reason(now)
            if hold is not None:
                return _STATE_OF_RULE[hold[0]]
            if (self._last_command_at is not None
                    and now - self._last_command_at > self.config.watchdog_s):
                return "watchdog"
            return "ok"

    # --- internals (call with the lock held) ------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else float(now)

    def _hold_reason(self, now: float) -> tuple[str, str, str] | None:
        """(rule, cause, reason) of a hold, or None. A hold is recorded again when its cause
        changes (say from "no observation" to "stamp from the future"), not as its numbers do."""
        cfg = self.config
        if self._estop_reason is not None:
            return "estop", "estop", f"e-stop latched ({self._estop_reason})"
        if self._disconnected:
            return "disconnect", "disconnect", "transport disconnected"
        if self._obs_stamp is None:
            return "stale", "no_observation", "no observation received yet"
        if self._obs_nonfinite:
            return "nonfinite", "nonfinite_observation", (
                f"observation has NaN or inf ({', '.join(self._obs_nonfinite)})")
        age = now - self._obs_stamp
        if age < -cfg.stale_after_s:
            return "stale", "future", (f"observation stamp is {-age:.3f}s in the future: stamp "
                                       f"it with the safety layer's clock (time.monotonic)")
        if not age <= cfg.stale_after_s:  # `not <=`: a NaN age is stale too
            return "stale", "old", f"observation is {age:.3f}s old (limit {cfg.stale_after_s}s)"
        if cfg.workspace_low is not None and self._ee_pos is not None:
            inside = (self._ee_pos >= cfg.workspace_low) & (self._ee_pos <= cfg.workspace_high)
            if not inside.all():
                parts = [f"{_AXES[i]}={self._ee_pos[i]:.4g} outside [{cfg.workspace_low[i]:.4g}, "
                         f"{cfg.workspace_high[i]:.4g}]" for i in np.flatnonzero(~inside)]
                reason = "end effector left the workspace: " + ", ".join(parts)
                return "workspace", "workspace", reason
        if cfg.max_delta is not None and self._unmeasured():
            return "stale", "no_position", (
                f"no measured position of action dims {self._unmeasured()} yet: max_delta has "
                "nothing to start the first command from (report joint_pos)")
        return None

    def _unmeasured(self) -> list[int]:
        """Held dims with no command sent and no measured position: no safe target yet."""
        if self._last_sent is not None:
            return []
        measured = 0 if self._joint_pos is None else self._joint_pos.shape[0]
        return [i for i in self.config.position_dims() if i >= measured]

    def _hold_locked(self) -> np.ndarray | None:
        cfg = self.config
        if cfg.hold_mode == "zero":
            return np.zeros(cfg.dim)
        if self._last_sent is not None:
            out = self._last_sent.copy()
        elif self._unmeasured():
            return None  # zeros would be a real target, anywhere in the joint range
        else:
            out = np.zeros(cfg.dim)
            if self._joint_pos is not None:
                out[: self._joint_pos.shape[0]] = self._joint_pos
            for _, _, idx, low, high in self._clips:
                out[idx] = np.clip(out[idx], low, high)
        if cfg.hold_zero_dims:
            out[list(cfg.hold_zero_dims)] = 0.0
        return out

    def _hold_note(self, out: np.ndarray | None) -> str:
        if out is not None:
            return "hold"
        return (f"hold, but nothing sent: no command yet and no measured position of action "
                f"dims {self._unmeasured()} to hold at")

    def _held(self, out: np.ndarray) -> None:
        # Zero mode: the next command ramps up from zero. Hold-position mode: the hold is the
        # last command already, or (before any) tracks the reported joints, so keep it live;
        # with zeroed dims the hold differs from the last command, so it becomes the last.
        if self.config.hold_mode == "zero" or self.config.hold_zero_dims:
            self._last_sent = out.copy()

    def _limit(self, proposed: np.ndarray, now: float) -> np.ndarray:
        out = proposed.copy()
        for rule, label, idx, low, high in self._clips:
            sub = out[idx]
            clipped = np.clip(sub, low, high)
            changed = np.flatnonzero(clipped != sub)
            if changed.size:
                parts = [f"action[{idx[j]}]={sub[j]:.4g} "
                         + (f"above {label} {high[j]:.4g}" if sub[j] > high[j]
                            else f"below {label} {low[j]:.4g}") for j in changed]
                before = out.copy()
                out[idx] = clipped
                self._record(now, rule, "; ".join(parts) + ": clipped", before, out.copy())
        max_delta = self.config.max_delta
        if max_delta is not None:
            ref = self._last_sent if self._last_sent is not None else self._hold_locked()
            assert ref is not None  # else _hold_reason holds ("no_position")
            step = out - ref
            capped = ref + np.clip(step, -max_delta, max_delta)
            changed = np.flatnonzero(np.abs(step) > max_delta)
            if changed.size:
                parts = [f"action[{i}] moves {step[i]:+.4g} from the last command, more than "
                         f"max_delta {max_delta[i]:.4g}" for i in changed]
                self._record(now, "max_delta", "; ".join(parts) + ": capped", out, capped)
                out = capped
        return out

    def _record(self, now: float, rule: str, reason: str, before: np.ndarray | None,
                after: np.ndarray | None, throttle: bool = True) -> None:
        event = Intervention(now, rule, reason, before, after)
        self.interventions.append(event)
        if not throttle or now - self._last_logged.get(rule, -np.inf) >= 1.0:
            self._last_logged[rule] = now
            logger.warning("%s: %s", rule, reason)
        if self._log is not None:
            try:
                self._log(event)
            except Exception:  # a broken log callback must not stop the safety filter
                logger.exception("safety log callback failed")


class KeyboardEstop:
    """Latch `safety.estop` when space or 'e' is pressed in the terminal.

    For bench tests; not a substitute for a hardware e-stop. Reads the terminal in cbreak
    mode (a key arrives without Enter) on a background thread. When stdin is not a terminal
    (a pipe, a service, pytest) `start` does nothing and returns False.
    """

    KEYS = (" ", "e", "E")

    def __init__(self, safety: SafetyLayer, fd: int | None = None) -> None:
        self._safety = safety
        self._fd = fd
        self._saved: list | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        try:
            fd = sys.stdin.fileno() if self._fd is None else self._fd
            if not os.isatty(fd):
                return False
            import termios
            import tty
        except (AttributeError, ImportError, OSError, ValueError):
            return False
        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="KeyboardEstop", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop watching and restore the terminal settings."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._saved is not None and self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def __enter__(self) -> KeyboardEstop:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self) -> None:
        assert self._fd is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(self._fd, 1)
            if not data:  # end of input
                return
            key = data.decode(errors="ignore")
            if key in self.KEYS:
                self._safety.estop(f"key {key!r} pressed")
