"""Bridge transport layer: CDR messages, in-process bus, zenoh (rmw_zenoh format) between two
processes, and rosbridge through our stand-in server with two clients.

The cross-process tests spawn `python -m ...` children that exit when their stdin closes; each
fixture closes stdin and, failing that, kills the child, so no process outlives the test.
"""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="needs the bridge extra: pip install 'embodied[bridge]'")

from rosbags.typesys import Stores, get_typestore  # noqa: E402

from embodied.sim2real import messages  # noqa: E402
from embodied.sim2real.launch import Child, free_port  # noqa: E402
from embodied.sim2real.transport import InProcBus, InProcTransport, Meta, make_transport  # noqa: E402

JS = "sensor_msgs/msg/JointState"
F64 = "std_msgs/msg/Float64MultiArray"
TRAJ = "trajectory_msgs/msg/JointTrajectory"


# --- helpers ---------------------------------------------------------------------------------


class Inbox:
    """A subscription callback that queues (data, meta) for the test thread."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def __call__(self, data: dict, meta: Meta) -> None:
        self.q.put((data, meta))

    def get(self, timeout: float = 2.0) -> tuple[dict, Meta]:
        return self.q.get(timeout=timeout)


def until_answered(send: Callable[[], None], inbox: Inbox, timeout: float = 5.0) -> None:
    """Send until the first answer: subscriptions take a moment to reach the other side."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send()
        try:
            inbox.get(0.05)
        except queue.Empty:
            continue
        time.sleep(0.05)  # let answers still in flight land, then forget them
        while not inbox.q.empty():
            inbox.q.get()
        return
    raise TimeoutError("no answer from the other process")


# --- messages --------------------------------------------------------------------------------


def test_joint_state_is_rosbags_cdr_and_hash():
    msg = messages.joint_state(["a", "b"], [0.1, -0.2], [1.0, 2.0], [0.0, 3.0], 5_000_000_007)
    payload = messages.encode(JS, msg)
    assert payload[:4] == b"\x00\x01\x00\x00"  # CDR little-endian encapsulation header

    store = get_typestore(Stores.ROS2_HUMBLE)  # an independent store, and the oldest we claim
    ref = store.deserialize_cdr(payload, JS)
    assert list(ref.name) == ["a", "b"]
    np.testing.assert_array_equal(ref.position, [0.1, -0.2])
    np.testing.assert_array_equal(ref.effort, [0.0, 3.0])
    assert (ref.header.stamp.sec, ref.header.stamp.nanosec) == (5, 7)
    assert bytes(store.serialize_cdr(ref, JS)) == payload

    h = messages.type_hash(JS)
    assert h == store.hash_rihs01(JS) == messages.type_hash("sensor_msgs/JointState")
    assert re.fullmatch(r"RIHS01_[0-9a-f]{64}", h)


def test_joint_trajectory_carries_a_chunk():
    chunk = np.arange(15, dtype=np.float64).reshape(5, 3) / 7
    dt = 0.02
    msg = messages.joint_trajectory(["j0", "j1", "j2"], chunk, dt, stamp_ns=42)
    back = messages.decode(TRAJ, messages.encode(TRAJ, msg))
    positions, times = messages.trajectory_chunk(back)
    np.testing.assert_array_equal(positions, chunk)
    np.testing.assert_allclose(times, dt * np.arange(5), atol=1e-9)
    assert [p["time_from_start"] for p in back["points"]][3] == {"sec": 0, "nanosec": 60_000_000}
    assert back["joint_names"] == ["j0", "j1", "j2"]
    with pytest.raises(ValueError, match="chunk must be"):
        messages.joint_trajectory(["j0"], chunk, dt)


def test_other_types_and_errors():
    img = messages.compressed_image(b"\xff\xd8jpeg", "jpeg", stamp_ns=1)
    back = messages.decode("sensor_msgs/msg/CompressedImage", messages.encode(
        "sensor_msgs/msg/CompressedImage", img))
    assert back["data"].tobytes() == b"\xff\xd8jpeg" and back["format"] == "jpeg"
    arr = messages.decode(F64, messages.encode(F64, messages.float_array(np.ones((2, 3)))))
    assert [d["size"] for d in arr["layout"]["dim"]] == [2, 3] and arr["data"].shape == (6,)
    with pytest.raises(ValueError, match="unknown message type .*Did you mean"):
        messages.encode("sensor_msgs/msg/JointStat", {})
    with pytest.raises(ValueError, match="no field"):
        messages.encode(JS, {"positions": [1.0]})


# --- in-process ------------------------------------------------------------------------------


def test_inproc_pub_sub():
    bus = InProcBus()
    inbox = Inbox()
    with InProcTransport(bus) as robot, make_transport("inproc", bus=bus) as policy:
        policy.subscribe("/joint_states", JS, inbox)  # "/x" and "x" name the same topic
        for i in range(3):
            robot.publish("joint_states", JS, messages.joint_state(["a"], [float(i)]))
        got = [inbox.get(0) for _ in range(3)]
        assert [m.seq for _, m in got] == [1, 2, 3] and got[0][1].topic == "/joint_states"
        assert got[2][0]["position"].tolist() == [2.0]
        assert got[0][0]["velocity"].dtype == np.float64  # decoded, not the sender's dict
        with pytest.raises(TypeError, match="use one type per topic"):
            robot.publish("joint_states", F64, messages.float_array([1.0]))
    robot.publish("joint_states", JS, messages.joint_state(["a"], [0.0]))  # closed: no delivery
    assert inbox.q.empty()
    with pytest.raises(ValueError, match="valid kinds are inproc, zenoh, rosbridge"):
        make_transport("dds")


# --- zenoh -----------------------------------------------------------------------------------


@pytest.fixture
def zenoh_pair() -> Iterator:
    """Our ZenohTransport listening on loopback, and an echo process connected to it."""
    pytest.importorskip("zenoh", reason="needs the bridge extra: pip install 'embodied[bridge]'")
    from embodied.sim2real.zenoh_transport import ZenohTransport

    endpoint = f"tcp/127.0.0.1:{free_port()}"
    ours = ZenohTransport(listen=[endpoint], connect=[], node_name="policy")
    try:
        with Child("embodied.sim2real.transport", ["--kind", "zenoh", "--connect", endpoint],
                   "ready", timeout=10.0):
            yield ours
    finally:
        ours.close()


def test_zenoh_two_processes(zenoh_pair):
    from embodied.sim2real.zenoh_transport import topic_key, unpack_attachment

    ours = zenoh_pair
    inbox = Inbox()
    ours.subscribe("cmd", F64, inbox)
    raw: list = []  # what is on the wire, seen by a plain zenoh subscriber
    sniffer = ours.session.declare_subscriber("0/cmd/**", lambda s: raw.append(
        (str(s.key_expr), s.attachment.to_bytes() if s.attachment else None)))
    obs = messages.joint_state(["a", "b"], [0.0, 0.0])
    until_answered(lambda: ours.publish("obs", JS, obs), inbox)
    raw.clear()

    seqs = []
    for i in range(5):
        ours.publish("obs", JS, messages.joint_state(["a", "b"], [i, -i], stamp_ns=i))
        data, meta = inbox.get()
        assert data["data"].tolist() == [i, -i]
        assert meta.topic == "/cmd" and meta.type_name == F64
        assert meta.source_time_ns <= meta.recv_time_ns
        seqs.append(meta.seq)
    assert seqs == list(range(seqs[0], seqs[0] + 5))  # the echo's publisher counts up by one

    key = f"0/cmd/std_msgs::msg::dds_::Float64MultiArray_/{messages.type_hash(F64)}"
    assert key == topic_key(0, "/cmd", F64)
    time.sleep(0.05)
    assert {k for k, _ in raw} == {key}
    assert all(len(a) == 33 for _, a in raw)  # int64, int64, varint 16 + 16-byte gid
    assert [unpack_attachment(a)[0] for _, a in raw][-5:] == seqs
    sniffer.undeclare()

    tokens = [str(r.ok.key_expr) for r in ours.session.liveliness().get("@ros2_lv/0/**",
                                                                      timeout=2.0) if r.ok]
    echo_tokens = [t for t in tokens if t.split("/")[2] != ours.zid]
    kinds = {t.split("/")[5]: t for t in echo_tokens}
    assert set(kinds) == {"NN", "MS", "MP"}, tokens
    assert kinds["NN"].endswith("/NN/%/%/echo")
    assert kinds["MS"].endswith(f"/MS/%/%/echo/%obs/sensor_msgs::msg::dds_::JointState_/"
                                f"{messages.type_hash(JS)}/:2:,10:,:,:,,")
    assert "/MP/%/%/echo/%cmd/std_msgs::msg::dds_::Float64MultiArray_/" in kinds["MP"]


def test_zenoh_reports_type_mismatch():
    pytest.importorskip("zenoh", reason="needs the bridge extra: pip install 'embodied[bridge]'")
    from embodied.sim2real.zenoh_transport import ZenohTransport

    with ZenohTransport(connect=[], listen=[]) as z:
        inbox = Inbox()
        z.subscribe("mixed", F64, inbox)
        z.subscribe("versions", JS, inbox)
        z.publish("mixed", JS, messages.joint_state(["a"], [1.0]))
        stale = f"0/versions/sensor_msgs::msg::dds_::JointState_/RIHS01_{'0' * 64}"
        z.session.put(stale, messages.encode(JS, messages.joint_state(["a"], [1.0])))
        deadline = time.monotonic() + 2.0
        while len(z.type_mismatches) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert inbox.q.empty()
        text = "\n".join(z.type_mismatches)
        assert "'/mixed'" in text and "sensor_msgs::msg::dds_::JointState_" in text
        assert "'/versions'" in text and "type hash" in text


# --- rosbridge -------------------------------------------------------------------------------


@pytest.fixture
def rosbridge_port() -> Iterator[int]:
    pytest.importorskip("roslibpy", reason="needs the bridge extra: pip install 'embodied[bridge]'")
    pytest.importorskip("websockets", reason="needs the bridge extra")
    with Child("embodied.sim2real.rosbridge", ["--port", "0"], "listening on",
               timeout=10.0) as server:
        yield int(server.ready_line.rsplit(":", 1)[1])


def test_rosbridge_two_clients(rosbridge_port):
    from embodied.sim2real.rosbridge import RosbridgeTransport

    robot = RosbridgeTransport(port=rosbridge_port)
    policy = RosbridgeTransport(port=rosbridge_port, type_style="ros1")
    try:
        obs, cmds = Inbox(), Inbox()
        policy.subscribe("joint_states", JS, obs)
        robot.subscribe("/cmd", TRAJ, cmds)
        first = messages.joint_state(["a"], [0.0])
        until_answered(lambda: robot.publish("joint_states", JS, first), obs)
        robot.publish("joint_states", JS, messages.joint_state(["a"], [0.5], [], [], 3 * 10**9 + 1))
        data, meta = obs.get()
        assert data["position"].tolist() == [0.5] and data["name"] == ["a"]
        assert meta.source_time_ns == 3 * 10**9 + 1 and meta.seq >= 2

        chunk = np.linspace(0, 1, 8).reshape(4, 2)
        traj = messages.joint_trajectory(["a", "b"], chunk, 0.1)
        until_answered(lambda: policy.publish("cmd", TRAJ, traj), cmds)
        policy.publish("cmd", TRAJ, traj)
        data, _ = cmds.get()
        positions, times = messages.trajectory_chunk(data)
        np.testing.assert_array_equal(positions, chunk)
        np.testing.assert_allclose(times, [0.0, 0.1, 0.2, 0.3])
    finally:
        robot.close()
        policy.close()


def test_rosbridge_server_refuses_type_clash(rosbridge_port):
    from embodied.sim2real.rosbridge import RosbridgeTransport

    a, b = RosbridgeTransport(port=rosbridge_port), RosbridgeTransport(port=rosbridge_port)
    try:
        inbox = Inbox()
        a.subscribe("x", F64, inbox)
        deadline = time.monotonic() + 2.0
        while not b.errors and time.monotonic() < deadline:
            b.publish("x", JS, messages.joint_state(["a"], [1.0]))
            time.sleep(0.02)
        assert "carries std_msgs/msg/Float64MultiArray" in b.errors[0]
        assert inbox.q.empty()
    finally:
        a.close()
        b.close()
