"""A transport that speaks rmw_zenoh's wire format, so ROS 2 nodes on rmw_zenoh see us.

ROS 2 (Jazzy on) can run over Zenoh instead of DDS (`RMW_IMPLEMENTATION=rmw_zenoh_cpp`).
Its messages are ordinary Zenoh publications, so a plain `eclipse-zenoh` session that follows
the same conventions talks to ROS 2 nodes without a ROS install, at a fraction of the
latency of a JSON bridge. The conventions, taken from rmw_zenoh_cpp (the sources of
`liveliness_utils.cpp`, `attachment_helpers.cpp`, `qos.cpp`) and written anew here:

Data key expression, one per topic and type:
    <domain_id>/<topic without leading or trailing '/'>/<pkg>::msg::dds_::<Type>_/<RIHS01_hash>
    e.g. 0/joint_states/sensor_msgs::msg::dds_::JointState_/RIHS01_a13e...260e
Payload: the message in CDR, little endian, with its 4-byte encapsulation header.
Attachment (33 bytes, Zenoh's serialisation of (int64, int64, uint8[16])):
    int64 LE sequence number (1, 2, ... per publisher)
    int64 LE source timestamp (wall clock, ns)
    1-byte length (16, a LEB128 varint) + 16-byte publisher gid
Liveliness tokens, which are how `ros2 node list` / `ros2 topic list` discover entities:
    @ros2_lv/<domain>/<zid>/<node_id>/<entity_id>/<kind>/<enclave>/<namespace>/<node_name>
        [/<topic>/<dds type>/<type hash>/<qos>]            (the bracket part for MP/MS only)
    kind: NN node, MP publisher, MS subscription. Every '/' inside a name becomes '%', so
    the root enclave and namespace are both '%' and topic /obs is '%obs'. zid is the Zenoh
    session id in hex; node and entity ids count up from 0 within the session (the node
    takes the first, and its token repeats it as entity id).
    qos: reliability:durability:history,depth:deadline s,ns:lifespan s,ns:liveliness,s,ns
    where a field equal to rmw_zenoh's default (reliable, transient local, keep last, 42,
    infinite durations, automatic) is left empty. We declare rclcpp's default profile
    (reliable, volatile, keep last 10): ":2:,10:,:,:,,".
rmw_zenoh derives a gid from an XXH3-128 of the entity's token; we use blake2b-128 of the
same string (no extra dependency); the gid only has to be unique per publisher.

Sessions run in peer mode with multicast scouting off, as rmw_zenoh configures them, and by
default connect to a Zenoh router on tcp/localhost:7447 (what `ros2 run rmw_zenoh_cpp
rmw_zenohd` starts). For a direct link between two of our processes, give one
`listen=["tcp/127.0.0.1:PORT"]` and the other `connect=["tcp/127.0.0.1:PORT"]`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from embodied.sim2real import messages
from embodied.sim2real.transport import Callback, Meta, Transport, ros_topic

try:
    import zenoh
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise ImportError("zenoh not installed: pip install 'embodied[bridge]'") from exc

log = logging.getLogger(__name__)

ROUTER = "tcp/localhost:7447"
ADMIN_SPACE = "@ros2_lv"
QOS_DEFAULT = ":2:,10:,:,:,,"  # reliable, volatile, keep last 10 (see module docstring)
_ATTACHMENT = struct.Struct("<qqB16s")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*/?$")


def topic_key(domain_id: int, topic: str, type_name: str) -> str:
    """The data key expression rmw_zenoh uses for `topic` carrying `type_name`."""
    _check_topic(topic)
    dds = messages.dds_type_name(type_name)
    return f"{domain_id}/{topic.strip('/')}/{dds}/{messages.type_hash(type_name)}"


def pack_attachment(seq: int, source_time_ns: int, gid: bytes) -> bytes:
    return _ATTACHMENT.pack(seq, source_time_ns, 16, gid)


def unpack_attachment(raw: bytes | None) -> tuple[int, int | None, bytes]:
    """(seq, source_time_ns, gid); (0, None, b"") for a sample without rmw's attachment."""
    if raw is None or len(raw) != _ATTACHMENT.size:
        return 0, None, b""
    seq, source_ns, length, gid = _ATTACHMENT.unpack(raw)
    if length != 16:
        return 0, None, b""
    return seq, source_ns, gid


def _check_topic(topic: str) -> None:
    if not _TOPIC.match(topic):
        raise ValueError(
            f"invalid topic {topic!r}: use ROS names, letters/digits/underscores separated "
            "by '/', e.g. 'joint_states' or '/robot/joint_states'"
        )


def _mangle(name: str) -> str:
    return name.replace("/", "%")


@dataclass
class _Publisher:
    type_name: str
    publisher: Any
    token: Any
    gid: bytes
    seq: itertools.count


class ZenohTransport(Transport):
    """Publish and subscribe ROS 2 topics the way rmw_zenoh does (see module docstring).

    Subscriptions match any type on the topic (a wildcard on the type and hash segments),
    so a publisher with another type or another version of the type (different RIHS01 hash)
    is reported once in the log and in `type_mismatches` instead of silently never matching.
    """

    def __init__(
        self,
        domain_id: int = 0,
        mode: str = "peer",
        connect: list[str] | None = None,
        listen: list[str] | None = None,
        node_name: str = "embodied",
    ) -> None:
        if not _NAME.match(node_name):
            raise ValueError(f"invalid node name {node_name!r}: letters, digits, underscores")
        if mode not in ("peer", "client", "router"):
            raise ValueError(f"invalid zenoh mode {mode!r}: use 'peer', 'client' or 'router'")
        self.domain_id = domain_id
        self.node_name = node_name
        self.type_mismatches: list[str] = []
        self._reported: set[str] = set()
        self._lock = threading.Lock()
        self._publishers: dict[str, _Publisher] = {}
        self._subscribers: list[tuple[Any, Any]] = []
        self._closed = False

        config = zenoh.Config()
        config.insert_json5("mode", json.dumps(mode))
        config.insert_json5("scouting/multicast/enabled", "false")
        connect = [ROUTER] if connect is None else connect
        config.insert_json5("connect/endpoints", json.dumps(connect))
        if listen is not None:
            config.insert_json5("listen/endpoints", json.dumps(listen))
        try:
            self.session = zenoh.open(config)
        except zenoh.ZError as exc:
            raise RuntimeError(
                f"could not open a zenoh session (connect={connect}, listen={listen}): {exc}; "
                "check the endpoints, e.g. that no other process listens on the same port"
            ) from exc
        self.zid = str(self.session.info.zid())
        self._ids = itertools.count()
        self._node_id = next(self._ids)
        self._node_token = self._declare_token(self._node_id, "NN")

    # --- Transport ----------------------------------------------------------------------------

    def publish(self, topic: str, type_name: str, data: dict[str, Any]) -> None:
        topic = ros_topic(topic)  # checked when its publisher is declared
        pub = self._publishers.get(topic) or self._declare_publisher(topic, type_name)
        if messages.normalize_type(type_name) != pub.type_name:
            raise ValueError(
                f"topic {topic!r} was first published as {pub.type_name}, now as {type_name}; "
                "use one type per topic"
            )
        payload = messages.encode(pub.type_name, data)
        attachment = pack_attachment(next(pub.seq), time.time_ns(), pub.gid)
        pub.publisher.put(payload, attachment=attachment)

    def subscribe(self, topic: str, type_name: str, callback: Callback) -> None:
        type_name = messages.normalize_type(type_name)
        expected = topic_key(self.domain_id, topic, type_name)  # checks the topic name
        topic = ros_topic(topic)
        pattern = f"{self.domain_id}/{topic.strip('/')}/*/*"

        def on_sample(sample: Any) -> None:
            recv_ns, recv_mono = time.time_ns(), time.monotonic_ns()
            key = str(sample.key_expr)
            if key != expected:
                self._report_mismatch(topic, key, expected)
                return
            raw = sample.attachment.to_bytes() if sample.attachment is not None else None
            seq, source_ns, _ = unpack_attachment(raw)
            try:
                data = messages.decode(type_name, sample.payload.to_bytes())
                callback(data, Meta(topic, type_name, seq, source_ns, recv_ns, recv_mono))
            except Exception:  # zenoh's thread would swallow it: say where it came from
                log.exception("zenoh subscriber on %s (%s) failed", topic, type_name)

        entity_id = next(self._ids)
        subscriber = self.session.declare_subscriber(pattern, on_sample)
        token = self._declare_token(entity_id, "MS", topic, type_name)
        with self._lock:
            self._subscribers.append((subscriber, token))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            entities = [(p.publisher, p.token) for p in self._publishers.values()]
            entities += self._subscribers
        for entity, token in entities:
            token.undeclare()
            entity.undeclare()
        self._node_token.undeclare()
        self.session.close()

    # --- details ------------------------------------------------------------------------------

    def liveliness_key(
        self, entity_id: int, kind: str, topic: str | None = None, type_name: str | None = None
    ) -> str:
        """The liveliness token rmw_zenoh would declare for this entity (format above)."""
        parts = [ADMIN_SPACE, str(self.domain_id), self.zid, str(self._node_id), str(entity_id),
                 kind, _mangle("/"), _mangle("/"), self.node_name]
        if topic is not None and type_name is not None:
            parts += [_mangle(ros_topic(topic)), messages.dds_type_name(type_name),
                      messages.type_hash(type_name), QOS_DEFAULT]
        return "/".join(parts)

    def _declare_token(
        self, entity_id: int, kind: str, topic: str | None = None, type_name: str | None = None
    ) -> Any:
        return self.session.liveliness().declare_token(
            self.liveliness_key(entity_id, kind, topic, type_name)
        )

    def _declare_publisher(self, topic: str, type_name: str) -> _Publisher:
        type_name = messages.normalize_type(type_name)
        key = topic_key(self.domain_id, topic, type_name)
        with self._lock:
            if topic in self._publishers:
                return self._publishers[topic]
            entity_id = next(self._ids)
            token_key = self.liveliness_key(entity_id, "MP", topic, type_name)
            gid = hashlib.blake2b(token_key.encode(), digest_size=16).digest()
            pub = _Publisher(
                type_name=type_name,
                publisher=self.session.declare_publisher(key),
                token=self.session.liveliness().declare_token(token_key),
                gid=gid,
                seq=itertools.count(1),
            )
            self._publishers[topic] = pub
            return pub

    def _report_mismatch(self, topic: str, key: str, expected: str) -> None:
        if key in self._reported:
            return
        self._reported.add(key)
        got_type, got_hash = key.split("/")[-2:]
        want_type, want_hash = expected.split("/")[-2:]
        what = "type" if got_type != want_type else "type hash (message definition version)"
        message = (
            f"zenoh topic {topic!r}: dropping messages with a different {what}: publisher "
            f"sends {got_type}/{got_hash}, we subscribed as {want_type}/{want_hash}. "
            "Both sides must use the same message type from the same ROS 2 definitions."
        )
        self.type_mismatches.append(message)
        log.error(message)
