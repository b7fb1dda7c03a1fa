"""The Robot interface (as LeRobot users know it) and a robot reached through a bridge transport.

    robot = BridgeRobot(make_transport("zenoh", connect=["tcp/robot:7447"]),
                        TopicMap.from_yaml("configs/robot/ros2_example.yaml"), safety={...},
                        joint_pos={"feature": "state", "index": [0, 1, 2, 3, 4, 5, 6, 14]})
    robot.connect()                          # waits for every observation topic
    robot.observation_features               # {"state": (26,)}
    robot.action_features                    # {"action": (4,)}
    obs = robot.get_observation()            # {"state": float64 array}
    sent = robot.send_action(action)         # what was actually sent, after the safety layer
    robot.disconnect()                       # a last hold (if anything was sent), closes

Every command goes through a `SafetyLayer` (there is no way around it: no settings means
the defaults). The robot also feeds it: each observation (arrival time on our clock, the
end-effector position when the topic map names one, the measured joint positions when
`joint_pos` names them, every value for the NaN check), an e-stop topic (latches it), and
silence (no observation for `disconnect_after_s` -> disconnect, until messages come back).
`joint_pos` (the robot YAML's `joint_pos: {feature, index}`: feature[index[k]] is action dim
k's measured position, in the robot's units, mapped into action units through the action
topic's low/high) is where a position-controlled robot's first command and early holds
start: without it nothing is held before the first command, and `max_delta` is refused.
Nothing is ever published to a robot that was never commanded (no hold on disconnect).
A monitor thread runs the command watchdog, so a caller that stops sending still ends in
a hold. Robots that can reset an episode (the fake robot) also take `reset_episode(seed)`
and report an `EpisodeStatus` (reward, done, success) on their status topic.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from embodied.core.errors import ConfigError, RobotError
from embodied.sim2real import messages
from embodied.sim2real.safety import Intervention, SafetyConfig, SafetyLayer
from embodied.sim2real.topic_map import STRING, TopicMap
from embodied.sim2real.transport import Meta, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeStatus:
    """What a robot that runs episodes reports each period (JSON in a std_msgs/String)."""

    episode: int = 0
    reset_id: int = 0
    """Id of the reset request that started this episode (0: none yet)."""
    step: int = 0
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    """Solved in the current state."""
    episode_success: bool = False
    """Solved at some step of this episode."""
    episode_return: float = 0.0
    action_dim: int | None = None
    task: str = ""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EpisodeStatus:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Robot(ABC):
    """A robot as a policy sees it; LeRobot's Robot methods, plus optional episode control."""

    name: str = "robot"
    safety: SafetyLayer | None = None

    @property
    @abstractmethod
    def observation_features(self) -> dict[str, tuple[int, ...]]:
        """Feature name -> shape, e.g. {"state": (26,), "rgb_front": (96, 96, 3)}."""

    @property
    @abstractmethod
    def action_features(self) -> dict[str, tuple[int, ...]]:
        """{"action": (D,)}: actions are vectors in the policy's (normalised) space."""

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def connect(self, timeout: float = 10.0) -> None:
        """Reach the robot; return once every observation feature has arrived."""

    @abstractmethod
    def get_observation(self) -> dict[str, np.ndarray]:
        """The latest value of every observation feature."""

    @abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray | None:
        """Send one action (D,); return the command actually sent (after safety), or None
        when safety sent nothing (holding before any command, with nothing to hold at)."""

    @abstractmethod
    def disconnect(self) -> None: ...

    def wait_for_observation(self, timeout: float = 1.0) -> dict[str, np.ndarray]:
        """The next observation after the last one returned (robots that stream observations
        at the control rate pace a control loop with this); default: the latest one."""
        return self.get_observation()

    def reset_episode(self, seed: int | None = None, timeout: float = 5.0) -> bool:
        """Start a new episode; False if this robot cannot (reset the scene by hand)."""
        return False

    def episode_status(self) -> EpisodeStatus | None:
        """The robot's latest episode status; None if it reports none."""
        return None

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


def make_safety(settings: dict[str, Any] | None, dim: int,
                log: Callable[[Intervention], None] | None = None) -> SafetyLayer:
    """A SafetyLayer from YAML-style settings (SafetyConfig fields); limits default to the
    policy's action space [-1, 1]."""
    settings = dict(settings or {})
    settings.setdefault("action_low", [-1.0] * dim)
    settings.setdefault("action_high", [1.0] * dim)
    known = {f.name for f in fields(SafetyConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"safety: unknown setting(s) {unknown}; known: {sorted(known)}")
    for key in ("workspace_action_dims", "hold_zero_dims"):
        if settings.get(key) is not None:
            settings[key] = tuple(settings[key])
    config = SafetyConfig(**settings)
    if config.dim != dim:
        raise ConfigError(f"safety: action limits have {config.dim} dims but the robot's action "
                          f"has {dim}; fix action_low/action_high")
    return SafetyLayer(config, log=log)


def _joint_pos_source(topics: TopicMap, joint_pos: Any) -> tuple[str, np.ndarray] | None:
    """(feature, index) from `joint_pos: {feature, index}` (see the module docstring)."""
    if joint_pos is None:
        return None
    if (not isinstance(joint_pos, dict) or not set(joint_pos) <= {"feature", "index"}
            or not joint_pos.get("index")):
        raise ConfigError(f"joint_pos must be {{feature: <observation>, index: [i, ...]}} "
                          f"(feature[index[k]] is action dim k's measured position), got "
                          f"{joint_pos!r}")
    feature = str(joint_pos.get("feature") or "state")
    if feature not in topics.observations or topics.observations[feature].is_image:
        raise ConfigError(f"joint_pos.feature {feature!r} is not a vector observation; "
                          f"observations: {list(topics.observations)}")
    index = np.array([int(i) for i in joint_pos["index"]])
    action = topics.action
    if (index < 0).any() or (action.dim is not None and index.size > action.dim):
        raise ConfigError(f"joint_pos.index must be at most {action.dim} indices >= 0 (one "
                          f"per leading action dim), got {index.tolist()}")
    if action.low is not None and action.high is not None:
        flat = np.flatnonzero(np.array(action.low[:index.size]) == action.high[:index.size])
        if flat.size:
            raise ConfigError(f"topics.action low == high at dims {flat.tolist()}: a measured "
                              "position there has no value in action units")
    return feature, index


class BridgeRobot(Robot):
    """A robot behind a `Transport`, its topics given by a `TopicMap` (see module docstring).

    Callbacks run on the transport's thread and only store values; decoding errors are
    kept and raised from the next `get_observation`, naming the topic. The first observation
    feature (normally "state") paces `wait_for_observation`.
    """

    def __init__(self, transport: Transport, topics: TopicMap,
                 safety: SafetyLayer | dict[str, Any] | None = None, *,
                 disconnect_after_s: float = 0.5, name: str = "bridge",
                 safety_log: Callable[[Intervention], None] | None = None,
                 joint_pos: dict[str, Any] | None = None) -> None:
        if not disconnect_after_s > 0:
            raise ConfigError(f"disconnect_after_s must be > 0, got {disconnect_after_s}")
        self.transport, self.topics, self.name = transport, topics, name
        self._joint_pos = _joint_pos_source(topics, joint_pos)
        self.disconnect_after_s = float(disconnect_after_s)
        self._safety_settings = safety
        self._safety_log = safety_log
        self.safety = safety if isinstance(safety, SafetyLayer) else None
        self._early_estop: str | None = None  # an e-stop that came before the safety layer
        self._cond = threading.Condition()
        self._publish_lock = threading.Lock()
        self._values: dict[str, list[np.ndarray | None]] = {
            f: [None] * len(spec.sources) for f, spec in topics.observations.items()}
        self._arrival: dict[str, list[float | None]] = {
            f: [None] * len(spec.sources) for f, spec in topics.observations.items()}
        self._shapes = {f: spec.shape for f, spec in topics.observations.items()}
        self._primary = next(iter(topics.observations))
        self._seq = 0  # messages on the primary feature's first source
        self._returned_seq = 0
        self._status: EpisodeStatus | None = None
        self._error: str | None = None
        self._action_dim: int | None = topics.action.dim
        self._disconnected = False
        self._connected = False
        self._sent_any = False
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # --- Robot --------------------------------------------------------------------------------

    @property
    def observation_features(self) -> dict[str, tuple[int, ...]]:
        unknown = [f for f, shape in self._shapes.items() if shape is None]
        if unknown:
            raise RobotError(f"the shape of {unknown} is learnt from the first message: "
                             "connect() first, or declare dim/shape in the topic map")
        return dict(self._shapes)  # type: ignore[arg-type]

    @property
    def action_features(self) -> dict[str, tuple[int, ...]]:
        return {"action": (self._require_action_dim(),)}

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, timeout: float = 10.0) -> None:
        if self._connected:
            return
        topics = self.topics
        for name, spec in topics.observations.items():
            for i, source in enumerate(spec.sources):
                self.transport.subscribe(source.topic, source.type, self._on_observation(name, i))
        if topics.status is not None:
            self.transport.subscribe(topics.status, STRING, self._on_status)
        if topics.estop is not None:
            self.transport.subscribe(topics.estop[0], topics.estop[1], self._on_estop)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._all_arrived() or self._action_dim_pending():
                left = deadline - time.monotonic()
                if left <= 0 or self._error is not None:
                    break
                self._cond.wait(min(left, 0.1))
        self._raise_error()
        silent = [s.topic for f, spec in topics.observations.items()
                  for i, s in enumerate(spec.sources) if self._arrival[f][i] is None]
        if silent:
            raise RobotError(
                f"no message on {silent} within {timeout} s: is the robot (or the fake robot) "
                "running, and does the transport reach it (zenoh: router endpoint and domain "
                "id; rosbridge: host and port)? `ros2 topic list` on the robot shows its topics")
        self.get_observation()  # learns shapes, checks declared ones
        dim = self._require_action_dim()
        if self.safety is None:
            settings = self._safety_settings if isinstance(self._safety_settings, dict) else None
            try:
                layer = make_safety(settings, dim, log=self._safety_log)
            except ConfigError as exc:
                raise RobotError(
                    f"the safety settings do not fit robot {self.name!r}, which observes "
                    f"{self._shapes} and takes {dim}-dim actions ({exc}). Is it the robot you "
                    "meant (the fake robot: its task)? Else fix the `safety` section") from exc
            with self._cond:  # from here on e-stop callbacks reach the layer directly
                self.safety = layer
        elif self.safety.config.dim != dim:
            raise ConfigError(f"the safety layer is for {self.safety.config.dim}-dim actions, "
                              f"the robot takes {dim}")
        with self._cond:
            early, self._early_estop = self._early_estop, None
        if early is not None:
            self.safety.estop(early)
        self._check_joint_pos(dim)
        with self._cond:  # what arrived before the layer existed counts
            measured = self._measured()
        self._observe(*measured)
        self._connected = True
        self._stop.clear()
        self._monitor = threading.Thread(target=self._watch, name=f"{self.name}-monitor",
                                         daemon=True)
        self._monitor.start()

    def get_observation(self) -> dict[str, np.ndarray]:
        self._raise_error()
        with self._cond:
            self._returned_seq = self._seq
            return {name: self._assemble(name) for name in self.topics.observations}

    def wait_for_observation(self, timeout: float = 1.0) -> dict[str, np.ndarray]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._seq <= self._returned_seq and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    topic = self.topics.observations[self._primary].sources[0].topic
                    raise RobotError(f"no new observation on {topic} within {timeout} s: the "
                                     "robot is silent or disconnected (the safety layer holds "
                                     "it); check the robot and the transport")
                self._cond.wait(left)
        return self.get_observation()

    def send_action(self, action: Any) -> np.ndarray | None:
        """Filter `action` through the safety layer and publish it; returns the action sent,
        in the policy's space (before the topic map's low/high scaling, if any), or None
        when the safety layer sent nothing (see `SafetyLayer.filter`)."""
        command = self._safety_layer().filter(self._as_action(action))
        if command is not None:
            self.publish_command(command)
        return command

    def send_chunk(self, chunk: Any, dt: float) -> np.ndarray:
        """Send a chunk (T, D) as one JointTrajectory, point k due k * dt after now, for a
        robot whose controller plays trajectories. Each row goes through the safety layer in
        order (so max_delta applies between rows); returns the rows sent (the chunk ends
        at a row the safety layer sends nothing for: a hold with nothing to hold at)."""
        if not self.topics.action.is_trajectory:
            raise ConfigError(f"send_chunk needs a JointTrajectory action topic; "
                              f"{self.topics.action.topic} is {self.topics.action.type}")
        rows = np.asarray(chunk, dtype=np.float64)
        if rows.ndim != 2:
            raise ValueError(f"chunk must be (T, D), got shape {rows.shape}")
        safety = self._safety_layer()
        kept = []
        for row in rows:
            command = safety.filter(self._as_action(row))
            if command is None:
                break
            kept.append(command)
        sent = np.array(kept).reshape(len(kept), self._require_action_dim())
        if not kept:
            return sent
        spec = self.topics.action
        msg = messages.joint_trajectory(spec.names(sent.shape[1]), self._to_robot(sent), dt,
                                        stamp_ns=time.time_ns())
        with self._publish_lock:
            self.transport.publish(self.topics.action.topic, self.topics.action.type, msg)
            self._sent_any = True
        return sent

    def publish_command(self, command: np.ndarray) -> None:
        """Publish a command that already went through the safety layer (the executor's
        `send`; everyone else calls `send_action`)."""
        spec = self.topics.action
        command = self._to_robot(np.asarray(command, dtype=np.float64))
        if spec.is_trajectory:
            msg = messages.joint_trajectory(spec.names(command.shape[0]), command[None], 0.0)
        else:
            msg = messages.float_array(command)
        with self._publish_lock:
            self.transport.publish(spec.topic, spec.type, msg)
            self._sent_any = True

    def send_hold(self) -> np.ndarray | None:
        """Publish the safety layer's hold command and return it. Nothing (None) for a robot
        that was never commanded (it stays as it is), or with nothing to hold at."""
        if not self._sent_any:
            return None
        hold = self._safety_layer().hold()
        if hold is not None:
            self.publish_command(hold)
        return hold

    def disconnect(self) -> None:
        """Send one last hold (if anything was sent), stop the monitor, close the transport."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join()
            self._monitor = None
        try:
            if self._connected and self.safety is not None:
                self.send_hold()
        except Exception:  # the transport may already be gone; closing matters more
            log.exception("could not send the final hold")
        self._connected = False
        self.transport.close()

    def reset_episode(self, seed: int | None = None, timeout: float = 5.0) -> bool:
        """Ask the robot for a new episode and wait for its first observation. The request
        is resent until the status shows it (a message can be lost while a link is young)."""
        if self.topics.reset is None:
            return False
        if self.topics.status is None:
            raise ConfigError("topics.reset needs topics.status (to see the reset happen)")
        request_id = random.SystemRandom().getrandbits(31) + 1
        text = json.dumps({"id": request_id, "seed": seed})
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise RobotError(f"the robot did not confirm reset {request_id} on "
                                 f"{self.topics.status} within {timeout} s; is it running "
                                 f"and subscribed to {self.topics.reset}?")
            with self._publish_lock:  # not under _cond: callbacks must never wait on a publish
                self.transport.publish(self.topics.reset, STRING, {"data": text})
            with self._cond:
                confirmed = self._cond.wait_for(
                    lambda: self._status is not None and self._status.reset_id == request_id,
                    0.25)
                if confirmed:
                    self._returned_seq = self._seq  # the next observation is the episode's first
                    break
        self.wait_for_observation(max(deadline - time.monotonic(), 1.0))
        return True

    def episode_status(self) -> EpisodeStatus | None:
        with self._cond:
            return self._status

    # --- callbacks ----------------------------------------------------------------------------

    def _on_observation(self, name: str, index: int) -> Callable[[dict, Meta], None]:
        spec = self.topics.observations[name]
        source = spec.sources[index]

        def callback(data: dict[str, Any], meta: Meta) -> None:
            try:
                value = source.decode(data, spec.shape if spec.is_image else None)
            except Exception as exc:  # kept for the reader: this thread has no caller
                self._fail(f"observation {name!r} from {source.topic}: {exc}")
                return
            now = time.monotonic()
            with self._cond:
                self._values[name][index] = value
                self._arrival[name][index] = now
                if name == self._primary and index == 0:
                    self._seq += 1
                reconnected, self._disconnected = self._disconnected, False
                measured = self._measured()
                self._cond.notify_all()
            if self.safety is not None:
                if reconnected:
                    self.safety.on_reconnect()
                self._observe(*measured)

        return callback

    def _on_status(self, data: dict[str, Any], meta: Meta) -> None:
        try:
            status = EpisodeStatus.from_json(data["data"])
        except (ValueError, TypeError) as exc:
            self._fail(f"status on {meta.topic} is not EpisodeStatus JSON ({exc})")
            return
        with self._cond:
            self._status = status
            if self._action_dim is None and status.action_dim is not None:
                self._action_dim = int(status.action_dim)
            self._cond.notify_all()

    def _on_estop(self, data: dict[str, Any], meta: Meta) -> None:
        if "data" in data and not data["data"]:  # Bool false: released; resuming is explicit
            log.info("e-stop released on %s; call safety.reset_estop() to resume", meta.topic)
            return
        reason = f"e-stop message on {meta.topic}"
        with self._cond:
            layer = self.safety
            if layer is None:  # during connect (a latched e-stop arrives on subscribing)
                self._early_estop = reason  # connect latches it into the new layer
                return
        layer.estop(reason)

    def _watch(self) -> None:
        """Disconnect detection and the command watchdog, ~20 times a second."""
        period = min(0.05, self.disconnect_after_s / 4)
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._cond:
                newest = max(t for ts in self._arrival.values() for t in ts if t is not None)
                silent = now - newest > self.disconnect_after_s and not self._disconnected
                if silent:
                    self._disconnected = True
            safety = self._safety_layer()
            if silent:
                topics = [s.topic for spec in self.topics.observations.values()
                          for s in spec.sources]
                safety.on_disconnect(f"no observation on {topics} for {now - newest:.2f} s")
            hold = safety.tick() if self._sent_any else None  # never commanded: leave it be
            if hold is not None:
                try:
                    self.publish_command(hold)
                except Exception:  # keep watching: the next period tries again
                    log.exception("could not publish the watchdog hold")

    # --- internals ----------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        log.error(message)
        with self._cond:
            if self._error is None:
                self._error = message
            self._cond.notify_all()

    def _raise_error(self) -> None:
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise RobotError(error)

    def _all_arrived(self) -> bool:
        return all(t is not None for ts in self._arrival.values() for t in ts)

    def _action_dim_pending(self) -> bool:
        return self._action_dim is None and self.topics.status is not None

    def _check_joint_pos(self, dim: int) -> None:
        """The measured positions fit the observation, and max_delta has them where needed."""
        measured = 0
        if self._joint_pos is not None:
            feature, index = self._joint_pos
            size = self._shapes[feature][0]  # type: ignore[index]
            if index.size > dim or index.max() >= size:
                raise ConfigError(f"joint_pos.index {index.tolist()} does not fit: {feature!r} "
                                  f"has {size} values and the action {dim} dims")
            measured = index.size
        config = self._safety_layer().config
        missing = [i for i in config.position_dims() if i >= measured]
        if config.max_delta is not None and missing:
            raise ConfigError(
                f"safety: max_delta caps each command's change, the first one's from the "
                f"measured position, but action dims {missing} of robot {self.name!r} have no "
                "measured position (hold_mode hold_position holds them). Set joint_pos in the "
                "robot YAML ({feature: state, index: [...]}: where the observation holds each "
                "action dim's position, in the robot's units), list velocity or delta dims in "
                "hold_zero_dims, or use hold_mode: zero for a velocity-controlled robot")

    def _measured(self) -> tuple[float | None, np.ndarray | None, np.ndarray | None,
                                 np.ndarray]:
        """What the safety layer observes (call with _cond held): the oldest arrival, the
        end effector, the measured joint positions in action units, every vector value."""
        vectors = [p for f, parts in self._values.items()
                   if not self.topics.observations[f].is_image for p in parts if p is not None]
        return (self._oldest_arrival(), self._ee_pos(), self._joint_positions(),
                np.concatenate(vectors) if vectors else np.zeros(0))

    def _observe(self, stamp: float | None, ee: np.ndarray | None, joints: np.ndarray | None,
                 values: np.ndarray) -> None:
        if self.safety is not None and stamp is not None:
            self.safety.observe(stamp, ee_pos=ee, joint_pos=joints, state=values)

    def _joint_positions(self) -> np.ndarray | None:
        if self._joint_pos is None:
            return None
        feature, index = self._joint_pos
        parts = self._values[feature]
        if any(p is None for p in parts):
            return None
        value = np.concatenate(parts)  # type: ignore[arg-type]
        if value.shape[0] <= index.max():
            return None  # a message of the wrong size: get_observation reports it
        position = value[index]
        spec = self.topics.action
        if spec.low is None or spec.high is None:
            return position
        # The inverse of ActionSpec.to_robot: the robot's units -> action units.
        low, high = np.array(spec.low[:index.size]), np.array(spec.high[:index.size])
        return (position - low) / (high - low) * 2.0 - 1.0

    def _to_robot(self, command: np.ndarray) -> np.ndarray:
        """Action units -> the robot's units; the last check that no NaN reaches the robot."""
        if not np.isfinite(command).all():
            raise RobotError(f"refusing to publish a command with NaN or inf ({command}): "
                             "commands must come through the safety layer (send_action)")
        return self.topics.action.to_robot(command)

    def _oldest_arrival(self) -> float | None:
        times = [t for ts in self._arrival.values() for t in ts]
        return None if any(t is None for t in times) else min(times)  # type: ignore[type-var]

    def _ee_pos(self) -> np.ndarray | None:
        if self.topics.ee_pos is None:
            return None
        name, start = self.topics.ee_pos
        parts = self._values[name]
        if any(p is None for p in parts):
            return None
        value = np.concatenate(parts)  # type: ignore[arg-type]
        return value[start:start + 3] if value.shape[0] >= start + 3 else None

    def _assemble(self, name: str) -> np.ndarray:
        spec, parts = self.topics.observations[name], self._values[name]
        missing = [s.topic for s, p in zip(spec.sources, parts, strict=True) if p is None]
        if missing:
            raise RobotError(f"no message yet on {missing} (feature {name!r}): connect() first")
        value = parts[0] if spec.is_image else np.concatenate(parts)  # type: ignore[arg-type]
        shape = self._shapes[name]
        if shape is None:
            self._shapes[name] = value.shape
        elif value.shape != shape:
            topics = [s.topic for s in spec.sources]
            raise RobotError(f"observation {name!r} from {topics} has shape {value.shape}, but "
                             f"the topic map declares {shape}: fix dim/shape in the topic map, "
                             "or check that the robot publishes what the policy was trained on")
        return value.copy()

    def _require_action_dim(self) -> int:
        if self._action_dim is None:
            raise RobotError("the action dim is unknown: set topics.action.dim in the robot's "
                             "YAML (or connect() to a robot that reports it in its status)")
        return self._action_dim

    def _safety_layer(self) -> SafetyLayer:
        if self.safety is None:
            raise RobotError(f"robot {self.name!r} is not connected: call connect() first")
        return self.safety

    def _as_action(self, action: Any) -> np.ndarray:
        if hasattr(action, "detach"):
            action = action.detach().cpu().numpy()
        out = np.asarray(action, dtype=np.float64).reshape(-1)
        dim = self._require_action_dim()
        if out.shape != (dim,):
            raise ValueError(f"action must have {dim} values, got shape "
                             f"{np.shape(action)}")
        return out
