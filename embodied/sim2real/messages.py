"""ROS 2 messages as plain dicts and CDR bytes, without a ROS install.

Every transport in this package speaks in plain-Python/numpy dicts shaped like the ROS 2
message (field names as in the .msg file); this module is the one place that knows how such
a dict becomes the bytes a ROS 2 node sends, and back. It leans on `rosbags`: its built-in
typestore holds the standard message definitions, serialises CDR exactly as rmw does
(4-byte encapsulation header included) and computes the RIHS01 type hashes that rmw_zenoh
puts in its key expressions, so nothing here is hand-written wire format.

Dict conventions (the same for every type):
  - nested messages are nested dicts; a missing field gets its zero value on `encode`;
  - numeric sequences and arrays are numpy arrays (`decode` returns writable copies; `encode`
    takes anything `np.asarray` takes, and bytes for uint8 data);
  - strings are `str`, sequences of strings or of messages are lists;
  - times and durations are `{"sec": int, "nanosec": int}`; `stamp(ns)` / `stamp_ns(d)`
    convert from and to integer nanoseconds.

Type names may be ROS 2 style (`sensor_msgs/msg/JointState`) or ROS 1 style
(`sensor_msgs/JointState`); both mean the same ROS 2 definition.
"""

from __future__ import annotations

import base64
import difflib
import struct
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

try:
    from rosbags.interfaces import Nodetype
    from rosbags.serde import SerdeError
    from rosbags.typesys import Stores, get_typestore
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise ImportError("rosbags not installed: pip install 'embodied[bridge]'") from exc

# rosbags' LATEST alias is the newest ROS 2 store it ships. The standard messages we use
# (sensor_msgs, std_msgs, trajectory_msgs) have had the same definitions, hence the same
# RIHS01 hashes, from Humble on, so any current distro's nodes agree with these bytes.
TYPESTORE = get_typestore(Stores.LATEST)

# The types this package is tested against; every other type in the store works the same way.
SUPPORTED = (
    "sensor_msgs/msg/JointState",
    "sensor_msgs/msg/CompressedImage",
    "std_msgs/msg/Float64MultiArray",
    "trajectory_msgs/msg/JointTrajectory",
)

_TIME_TYPES = ("builtin_interfaces/msg/Time", "builtin_interfaces/msg/Duration")
# ROS 1 JSON (rosbridge on ROS 1) spells time fields secs/nsecs; accepted on input.
_TIME_ALIASES = {"secs": "sec", "nsecs": "nanosec"}


def normalize_type(type_name: str) -> str:
    """`pkg/Type` or `pkg/msg/Type` -> `pkg/msg/Type`, checked against the typestore."""
    parts = type_name.strip("/").split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    name = "/".join(parts)
    if name not in TYPESTORE.fielddefs:
        close = difflib.get_close_matches(name, TYPESTORE.fielddefs.keys(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown message type {type_name!r}: not in rosbags' ROS 2 typestore.{hint} "
            f"Known types include {', '.join(SUPPORTED)}."
        )
    return name


def type_hash(type_name: str) -> str:
    """RIHS01 hash of a type, e.g. `RIHS01_a13e...` (64 hex digits), as rmw_zenoh keys use."""
    return _type_hash(normalize_type(type_name))


@cache
def _type_hash(name: str) -> str:
    return TYPESTORE.hash_rihs01(name)


def dds_type_name(type_name: str) -> str:
    """`sensor_msgs/msg/JointState` -> `sensor_msgs::msg::dds_::JointState_` (rmw naming)."""
    pkg, kind, name = normalize_type(type_name).split("/")
    return f"{pkg}::{kind}::dds_::{name}_"


def encode(type_name: str, data: dict[str, Any]) -> bytes:
    """Dict -> CDR bytes (little endian, with the 4-byte encapsulation header)."""
    name = normalize_type(type_name)
    return bytes(TYPESTORE.serialize_cdr(_to_msg(name, data, strict=True), name))


def decode(type_name: str, payload: bytes | memoryview) -> dict[str, Any]:
    """CDR bytes -> dict.

    Bytes after the message are ignored: Fast DDS (rclpy's serialize_message, DDS samples)
    can end a message with more padding than the 0-3 bytes rosbags' own check allows (a
    JointState came with 4), so the message is parsed with rosbags' deserializer and its
    end-of-buffer check left out. A truncated or malformed message is still an error.
    """
    name = normalize_type(type_name)
    raw = memoryview(payload)
    if len(raw) < 4 or bytes(raw[:2]) not in (b"\x00\x00", b"\x00\x01"):
        raise SerdeError(f"{name}: not CDR (its 4-byte encapsulation header is missing or "
                         "unsupported)")
    msgdef = TYPESTORE.get_msgdef(name)
    parse = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
    try:
        message, _ = parse(raw[4:], 0, msgdef.cls, TYPESTORE)
    except (struct.error, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise SerdeError(f"could not decode a {name} message: {exc}") from exc
    return _to_dict(message)


def normalize(type_name: str, data: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """Fill defaults and coerce dtypes, giving the dict `decode` would return for `data`.

    With strict=False unknown fields are dropped (a ROS 1 Header's `seq`, say) and uint8
    data may arrive base64-encoded, as rosbridge sends it; transports use that for JSON.
    """
    name = normalize_type(type_name)
    return _to_dict(_to_msg(name, data, strict=strict))


def to_json(type_name: str, data: dict[str, Any]) -> dict[str, Any]:
    """Dict -> JSON-ready dict in rosbridge's conventions (uint8 arrays as base64 strings)."""
    name = normalize_type(type_name)
    return _jsonable(_to_msg(name, data, strict=True))


# --- helpers for the messages a policy bridge sends ------------------------------------------


def stamp(ns: int) -> dict[str, int]:
    """Integer nanoseconds -> `{"sec", "nanosec"}` (a Time or a Duration)."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return {"sec": sec, "nanosec": nanosec}


def stamp_ns(t: dict[str, int]) -> int:
    """`{"sec", "nanosec"}` -> integer nanoseconds."""
    return int(t["sec"]) * 1_000_000_000 + int(t["nanosec"])


def header(stamp_ns_: int, frame_id: str = "") -> dict[str, Any]:
    return {"stamp": stamp(stamp_ns_), "frame_id": frame_id}


def joint_state(
    names: Sequence[str],
    position: Sequence[float] | np.ndarray,
    velocity: Sequence[float] | np.ndarray | None = None,
    effort: Sequence[float] | np.ndarray | None = None,
    stamp_ns: int = 0,
) -> dict[str, Any]:
    """A `sensor_msgs/msg/JointState` dict; velocity/effort may be omitted (empty in ROS)."""
    position = np.asarray(position, dtype=np.float64)
    if len(names) != len(position):
        raise ValueError(f"joint_state: {len(names)} names but {len(position)} positions")
    return {
        "header": header(stamp_ns),
        "name": list(names),
        "position": position,
        "velocity": np.asarray([] if velocity is None else velocity, dtype=np.float64),
        "effort": np.asarray([] if effort is None else effort, dtype=np.float64),
    }


def float_array(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """A `std_msgs/msg/Float64MultiArray` dict; a 2-D input gets a row-major layout."""
    values = np.asarray(values, dtype=np.float64)
    dims, stride = [], int(values.size)
    for i, size in enumerate(values.shape if values.ndim > 1 else ()):
        dims.append({"label": f"dim{i}", "size": int(size), "stride": stride})
        stride //= max(int(size), 1)
    return {"layout": {"dim": dims, "data_offset": 0}, "data": values.ravel()}


def joint_trajectory(
    names: Sequence[str], chunk: np.ndarray, dt: float, stamp_ns: int = 0
) -> dict[str, Any]:
    """A `trajectory_msgs/msg/JointTrajectory` carrying a whole action chunk.

    chunk is [T, D] (T actions of D joints); point k holds action k as `positions` with
    `time_from_start = k * dt`, so the first action is due at the header stamp.
    """
    chunk = np.asarray(chunk, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] != len(names):
        raise ValueError(
            f"joint_trajectory: chunk must be [T, D] with D = {len(names)} joint names, "
            f"got shape {chunk.shape}"
        )
    points = [
        {"positions": row, "time_from_start": stamp(round(k * dt * 1e9))}
        for k, row in enumerate(chunk)
    ]
    return {"header": header(stamp_ns), "joint_names": list(names), "points": points}


def trajectory_chunk(msg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `joint_trajectory`: ([T, D] positions, [T] time_from_start in seconds)."""
    points = msg["points"]
    if not points:
        return np.zeros((0, len(msg["joint_names"]))), np.zeros(0)
    chunk = np.stack([np.asarray(p["positions"], dtype=np.float64) for p in points])
    times = np.array([stamp_ns(p["time_from_start"]) * 1e-9 for p in points])
    return chunk, times


def compressed_image(jpeg_bytes: bytes, format: str = "jpeg", stamp_ns: int = 0) -> dict:
    """A `sensor_msgs/msg/CompressedImage` dict around already-encoded image bytes."""
    return {
        "header": header(stamp_ns),
        "format": format,
        "data": np.frombuffer(bytes(jpeg_bytes), dtype=np.uint8),
    }


# --- dict <-> rosbags message objects --------------------------------------------------------


def _to_msg(name: str, data: dict[str, Any] | None, *, strict: bool) -> Any:
    """Build rosbags' message object for `name` from a (partial) dict."""
    data = dict(data or {})
    if name in _TIME_TYPES:
        data = {_TIME_ALIASES.get(k, k): v for k, v in data.items()}
    fields = TYPESTORE.get_msgdef(name).fields
    known = {f for f, _ in fields}
    unknown = set(data) - known
    if unknown and strict:
        raise ValueError(
            f"{name} has no field(s) {sorted(unknown)}; its fields are {sorted(known)}"
        )
    kwargs = {}
    for field, desc in fields:
        try:
            kwargs[field] = _to_value(desc, data.get(field), strict)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}.{field}: {exc}") from exc
    return TYPESTORE.types[name](**kwargs)


def _to_value(desc: tuple, value: Any, strict: bool) -> Any:
    kind, rest = desc
    if kind == Nodetype.BASE:
        return _base(rest[0], value)
    if kind == Nodetype.NAME:
        return _to_msg(rest, value, strict=strict)
    (sub_kind, sub_rest), length = rest  # ARRAY (fixed length) or SEQUENCE (bound or 0)
    if sub_kind == Nodetype.BASE and sub_rest[0] != "string":
        dtype = np.dtype(_ndtype(sub_rest[0]))
        if value is None:
            value = np.zeros(length if kind == Nodetype.ARRAY else 0, dtype)
        elif isinstance(value, str):  # rosbridge sends uint8[] as base64
            value = np.frombuffer(base64.b64decode(value), dtype)
        elif isinstance(value, bytes | bytearray | memoryview):
            value = np.frombuffer(bytes(value), dtype)
        value = np.ascontiguousarray(value, dtype=dtype).ravel()
    else:
        value = [] if value is None else [_to_value((sub_kind, sub_rest), v, strict) for v in value]
    if kind == Nodetype.ARRAY and len(value) != length:
        raise ValueError(f"fixed-size array needs {length} elements, got {len(value)}")
    return value


def _base(typ: str, value: Any) -> Any:
    if typ == "string":
        return "" if value is None else str(value)
    if typ == "bool":
        return bool(value)
    if typ.startswith("float"):
        return float(value or 0.0)
    return int(value or 0)


def _ndtype(typ: str) -> str:
    # The dtypes rosbags' deserialiser produces (rosbags.serde.utils.ndtype).
    return {"bool": "bool_", "char": "uint8"}.get(typ, typ)


def _walk(msg: Any, array: Any) -> dict[str, Any]:
    """A message as nested dicts, numpy arrays converted by `array`."""
    out = {}
    for field, _ in TYPESTORE.get_msgdef(msg.__msgtype__).fields:
        value = getattr(msg, field)
        if isinstance(value, np.ndarray):
            value = array(value)
        elif isinstance(value, list):
            value = [_walk(v, array) if hasattr(v, "__msgtype__") else v for v in value]
        elif hasattr(value, "__msgtype__"):
            value = _walk(value, array)
        out[field] = value
    return out


def _to_dict(msg: Any) -> dict[str, Any]:
    # Deserialised arrays are read-only views of the payload: copy them.
    return _walk(msg, lambda a: a.copy())


def _jsonable(msg: Any) -> dict[str, Any]:
    # rosbridge's JSON: byte arrays as base64, other arrays as lists.
    return _walk(msg, lambda a: base64.b64encode(a.tobytes()).decode("ascii")
                 if a.dtype in (np.uint8, np.int8) else a.tolist())
