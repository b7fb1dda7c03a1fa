"""Which ROS topics carry which observation features, and where commands and control go.

A robot's YAML (`configs/robot/<name>.yaml`) holds a `topics:` section; `TopicMap.from_yaml`
reads it. Observation features are named as the simulated task names them ("state",
"rgb_<camera>"), so a policy sees the same dict from a robot as from a VecEnv:

    topics:
      observations:
        state:                                  # one source, or a list (concatenated)
          topic: /joint_states
          type: sensor_msgs/msg/JointState
          fields: [position, velocity]          # JointState fields, in this order
          joints: [joint1, joint2]              # reorder by name (default: as published)
          dim: 4                                # null: learnt from the first message
        rgb_front:
          topic: /camera/image/compressed
          type: sensor_msgs/msg/CompressedImage
          shape: [96, 96, 3]                    # decoded, then resized to this
      action:
        topic: /embodied/command
        type: std_msgs/msg/Float64MultiArray    # one action per message, or
                                                # trajectory_msgs/msg/JointTrajectory (chunks)
        dim: 4                                  # null: from the robot's status message
        joint_names: [x, y, z, gripper]         # JointTrajectory joint names
        low: [-2.8, -1.7, -2.8, 0.0]            # optional: the robot's units at -1 and +1
        high: [2.8, 1.7, 2.8, 0.08]
      estop: {topic: /embodied/estop, type: std_msgs/msg/Bool}   # Bool true or any Empty
      reset: /embodied/reset                    # null: the robot cannot reset itself
      status: /embodied/status                  # episode status (fake robot), or null
      ee_pos: {feature: state, start: 0}        # state[start:start+3] is the end effector

Float64MultiArray / Float32MultiArray sources may take `index: [start, stop]` (a slice of
`data`). Observations are decoded on the transport's thread, so a malformed message is
reported (with the topic and the fix) when the robot is next read, not lost in a log.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embodied.core.errors import ConfigError, RobotError

ARRAY_TYPES = ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/Float32MultiArray")
JOINT_STATE = "sensor_msgs/msg/JointState"
IMAGE = "sensor_msgs/msg/CompressedImage"
OBS_TYPES = (*ARRAY_TYPES, JOINT_STATE, IMAGE)
COMMAND_TYPES = ("std_msgs/msg/Float64MultiArray", "trajectory_msgs/msg/JointTrajectory")
ESTOP_TYPES = ("std_msgs/msg/Bool", "std_msgs/msg/Empty")
STRING = "std_msgs/msg/String"
JOINT_FIELDS = ("position", "velocity", "effort")


def _full_type(type_name: str) -> str:
    """`pkg/Type` or `pkg/msg/Type` -> `pkg/msg/Type` (without needing rosbags)."""
    parts = str(type_name).strip("/").split("/")
    return "/".join([parts[0], "msg", parts[1]]) if len(parts) == 2 else "/".join(parts)


def _keys(where: str, d: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {d!r}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    missing = [k for k in required if d.get(k) is None]
    if missing:
        raise ConfigError(f"{where}: missing {missing}")
    return d


@dataclass(frozen=True)
class Source:
    """One topic that fills (part of) a feature."""

    topic: str
    type: str
    fields: tuple[str, ...] = ("position",)
    joints: tuple[str, ...] | None = None
    index: tuple[int, int] | None = None

    @classmethod
    def from_dict(cls, where: str, d: dict[str, Any]) -> Source:
        _keys(where, d, ("topic", "type", "fields", "joints", "index"), ("topic", "type"))
        type_name = _full_type(d["type"])
        if type_name not in OBS_TYPES:
            raise ConfigError(f"{where}: observation type {d['type']!r} is not supported; use "
                              f"one of {list(OBS_TYPES)}")
        fields = tuple(d.get("fields") or ("position",))
        bad = [f for f in fields if f not in JOINT_FIELDS]
        if bad:
            raise ConfigError(f"{where}: JointState has no field(s) {bad}; use {JOINT_FIELDS}")
        index = d.get("index")
        if index is not None and (len(index) != 2 or int(index[0]) >= int(index[1])):
            raise ConfigError(f"{where}: index must be [start, stop] with start < stop, "
                              f"got {index}")
        return cls(str(d["topic"]), type_name, fields,
                   None if d.get("joints") is None else tuple(str(j) for j in d["joints"]),
                   None if index is None else (int(index[0]), int(index[1])))

    def decode(self, msg: dict[str, Any], image_shape: tuple[int, ...] | None = None
               ) -> np.ndarray:
        """The message's part of the feature: float64 (n,), or uint8 (H, W, 3) for images."""
        if self.type == IMAGE:
            return _decode_image(self.topic, msg, image_shape)
        if self.type == JOINT_STATE:
            values = self._joint_values(msg)
        else:
            values = np.asarray(msg["data"], dtype=np.float64).ravel()
        if self.index is not None:
            start, stop = self.index
            if stop > values.shape[0]:
                raise RobotError(f"{self.topic} carries {values.shape[0]} values, but the topic "
                                 f"map takes index [{start}, {stop}]; fix `index`")
            values = values[start:stop]
        return values

    def _joint_values(self, msg: dict[str, Any]) -> np.ndarray:
        names = list(msg["name"])
        if self.joints is None:
            order = np.arange(len(names))
        else:
            missing = [j for j in self.joints if j not in names]
            if missing:
                raise RobotError(f"{self.topic}: joint(s) {missing} not in the message (it has "
                                 f"{names}); fix `joints` in the topic map")
            order = np.array([names.index(j) for j in self.joints])
        parts = []
        for field in self.fields:
            values = np.asarray(msg[field], dtype=np.float64)
            if values.shape[0] != len(names):
                raise RobotError(f"{self.topic}: JointState.{field} has {values.shape[0]} values "
                                 f"for {len(names)} joints; drop {field!r} from `fields`")
            parts.append(values[order])
        return np.concatenate(parts)


def _decode_image(topic: str, msg: dict[str, Any], shape: tuple[int, ...] | None) -> np.ndarray:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(np.asarray(msg["data"], np.uint8).tobytes()))
        image = image.convert("RGB")
    except Exception as exc:  # PIL raises several types for bad data
        raise RobotError(f"{topic}: could not decode the {msg.get('format')!r} image ({exc}); "
                         "publish JPEG or PNG (image_transport's compressed format)") from exc
    if shape is not None and image.size != (shape[1], shape[0]):
        image = image.resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class FeatureSpec:
    """An observation feature: its sources, concatenated, and its shape (None: learnt)."""

    name: str
    sources: tuple[Source, ...]
    shape: tuple[int, ...] | None

    @property
    def is_image(self) -> bool:
        return self.sources[0].type == IMAGE

    @classmethod
    def from_dict(cls, name: str, d: Any) -> FeatureSpec:
        where = f"topics.observations.{name}"
        entries = d if isinstance(d, list) else [d]
        shape = None
        sources = []
        for i, entry in enumerate(entries):
            entry = dict(_keys(where, entry, ("topic", "type", "fields", "joints", "index",
                                              "dim", "shape")))
            dim, shape_ = entry.pop("dim", None), entry.pop("shape", None)
            if dim is not None or shape_ is not None:
                if i:
                    raise ConfigError(f"{where}: give dim/shape once, on the first source")
                shape = (int(dim),) if dim is not None else tuple(int(s) for s in shape_)
            sources.append(Source.from_dict(f"{where}[{i}]", entry))
        if not sources:
            raise ConfigError(f"{where}: needs at least one source (topic and type)")
        images = [s.type == IMAGE for s in sources]
        if any(images) and len(sources) > 1:
            raise ConfigError(f"{where}: an image feature has exactly one source")
        if any(images) and (shape is None or len(shape) != 3 or shape[2] != 3):
            raise ConfigError(f"{where}: an image feature needs shape: [H, W, 3]")
        return cls(name, tuple(sources), shape)


@dataclass(frozen=True)
class ActionSpec:
    topic: str
    type: str
    dim: int | None
    joint_names: tuple[str, ...] | None = None
    low: tuple[float, ...] | None = None
    """With `high`: the robot's units at action -1 and +1 (e.g. joint limits in radians);
    None: actions go out as the policy emits them, in [-1, 1]."""
    high: tuple[float, ...] | None = None

    @property
    def is_trajectory(self) -> bool:
        return self.type == COMMAND_TYPES[1]

    def to_robot(self, action: np.ndarray) -> np.ndarray:
        """Policy action in [-1, 1] -> the command in the robot's units."""
        if self.low is None or self.high is None:
            return action
        low, high = np.asarray(self.low), np.asarray(self.high)
        return low + (action + 1.0) * 0.5 * (high - low)

    def names(self, dim: int) -> list[str]:
        """Joint names for JointTrajectory commands (a0, a1, ... when not configured)."""
        if self.joint_names is not None:
            return list(self.joint_names)
        return [f"a{i}" for i in range(dim)]


def _action_spec(a: dict[str, Any], action_type: str) -> ActionSpec:
    dim = None if a.get("dim") is None else int(a["dim"])
    names = None if a.get("joint_names") is None else tuple(str(n) for n in a["joint_names"])
    if (a.get("low") is None) != (a.get("high") is None):
        raise ConfigError("topics.action: give both low and high, or neither")
    low = None if a.get("low") is None else tuple(float(x) for x in a["low"])
    high = None if a.get("high") is None else tuple(float(x) for x in a["high"])
    for what, n in (("joint_names", names), ("low", low), ("high", high)):
        if n is not None and (dim is None or len(n) != dim):
            raise ConfigError(f"topics.action.{what} has {len(n)} entries: set dim to match "
                              f"(dim is {dim})")
    return ActionSpec(str(a["topic"]), action_type, dim, names, low, high)


@dataclass(frozen=True)
class TopicMap:
    observations: dict[str, FeatureSpec]
    action: ActionSpec
    estop: tuple[str, str] | None = None
    """(topic, type) of the e-stop; None: no e-stop topic (keyboard only)."""
    reset: str | None = None
    status: str | None = None
    ee_pos: tuple[str, int] | None = None
    """(feature, start): feature[start:start+3] is the end-effector position."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TopicMap:
        d = _keys("topics", d, ("observations", "action", "estop", "reset", "status", "ee_pos"),
                  ("observations", "action"))
        observations = {name: FeatureSpec.from_dict(name, spec)
                        for name, spec in dict(d["observations"]).items()}
        if not observations:
            raise ConfigError("topics.observations is empty; map at least `state`")
        a = _keys("topics.action", d["action"],
                  ("topic", "type", "dim", "joint_names", "low", "high"), ("topic", "type"))
        action_type = _full_type(a["type"])
        if action_type not in COMMAND_TYPES:
            raise ConfigError(f"topics.action.type {a['type']!r} is not supported; use one of "
                              f"{list(COMMAND_TYPES)}")
        action = _action_spec(a, action_type)
        estop = None
        if d.get("estop") is not None:
            e = _keys("topics.estop", d["estop"], ("topic", "type"), ("topic",))
            estop_type = _full_type(e.get("type") or ESTOP_TYPES[0])
            if estop_type not in ESTOP_TYPES:
                raise ConfigError(f"topics.estop.type must be one of {list(ESTOP_TYPES)}, got "
                                  f"{e['type']!r}")
            estop = (str(e["topic"]), estop_type)
        ee = None
        if d.get("ee_pos") is not None:
            e = _keys("topics.ee_pos", d["ee_pos"], ("feature", "start"), ("feature",))
            if e["feature"] not in observations:
                raise ConfigError(f"topics.ee_pos.feature {e['feature']!r} is not an "
                                  f"observation; observations: {list(observations)}")
            ee = (str(e["feature"]), int(e.get("start") or 0))
        return cls(observations, action, estop,
                   None if d.get("reset") is None else str(d["reset"]),
                   None if d.get("status") is None else str(d["status"]), ee)

    def qos_roles(self) -> dict[str, str]:
        """{topic: QoS role} for transports with QoS (ros2): observations "sensor", action
        and reset "command", status "latched" (a late joiner sees the last one), the e-stop
        "estop" (latched, and read from publishers of any QoS)."""
        roles = {s.topic: "sensor" for f in self.observations.values() for s in f.sources}
        roles[self.action.topic] = "command"
        if self.reset is not None:
            roles[self.reset] = "command"
        if self.status is not None:
            roles[self.status] = "latched"
        if self.estop is not None:
            roles[self.estop[0]] = "estop"
        return roles

    @classmethod
    def from_yaml(cls, path: str | Path) -> TopicMap:
        """Read the `topics:` section of a robot YAML (or a file that is only that section)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the topic map {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping with a `topics:` section")
        return cls.from_dict(data.get("topics", data))
