"""Robots through the bridge: the fake robot (a MuJoCo task behind a transport), BridgeRobot,
RobotEnv, `embodied deploy` and `embodied record`.

The in-process tests run the fake robot on a thread over InProcTransport (fast, same code
path as over a network). The loopback tests start real processes (the fake robot, our
rosbridge server, the CLI) and end them in `finally`/context managers: every child is
started with --exit-on-eof, so it also exits if its parent dies.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("rosbags", reason="needs the bridge extra: pip install 'embodied[bridge]'")
pytest.importorskip("zenoh", reason="needs the bridge extra: pip install 'embodied[bridge]'")

from embodied.core.errors import ConfigError, RobotError  # noqa: E402
from embodied.core.paths import ASSETS_DIR, CONFIGS_DIR  # noqa: E402
from embodied.data.dataset import EpisodeDataset  # noqa: E402
from embodied.sim2real import messages  # noqa: E402
from embodied.sim2real.deploy import run_policy_episode  # noqa: E402
from embodied.sim2real.fake_robot import FakeRobot  # noqa: E402
from embodied.sim2real.launch import fake_robot  # noqa: E402
from embodied.sim2real.robot import BridgeRobot, EpisodeStatus  # noqa: E402
from embodied.sim2real.robot_env import RobotEnv  # noqa: E402
from embodied.sim2real.safety import SafetyConfig, SafetyLayer  # noqa: E402
from embodied.sim2real.topic_map import Source, TopicMap  # noqa: E402
from embodied.sim2real.transport import InProcBus, InProcTransport, make_transport  # noqa: E402

FAKE = yaml.safe_load((CONFIGS_DIR / "robot" / "fake.yaml").read_text())
TOPICS = TopicMap.from_dict(FAKE["topics"])
EXAMPLE = yaml.safe_load((CONFIGS_DIR / "robot" / "ros2_example.yaml").read_text())
EXAMPLE_TOPICS = TopicMap.from_dict(EXAMPLE["topics"])
# The example arm's pose (7 joints in radians, gripper in metres), far from the middle of
# its ranges, where action zero would send it.
POSE = np.array([2.5, -1.5, 0.0, -2.8, 2.5, 3.5, -2.5, 0.07])
POLICY = ASSETS_DIR / "base" / "push_cube_flow"
PUSH_X = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # ee +x at full speed, gripper closed


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "embodied.cli", *args],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # show where it got stuck
        pytest.fail(f"`embodied {' '.join(args)}` ran over {timeout} s; stdout:\n"
                    f"{exc.stdout}\nstderr:\n{exc.stderr}")


@contextmanager
def inproc_robot(task: str = "push_cube", rate_hz: float = 100.0, topics: TopicMap = TOPICS,
                 transport: type[InProcTransport] = InProcTransport,
                 **knobs) -> Iterator[tuple[FakeRobot, BridgeRobot]]:
    """The fake robot on a thread and a connected BridgeRobot, over one in-process bus."""
    bus = InProcBus()
    fake = FakeRobot(InProcTransport(bus), task, rate_hz=rate_hz, **knobs)
    stop = threading.Event()
    thread = threading.Thread(target=fake.run, args=(stop,), daemon=True)
    thread.start()
    robot = BridgeRobot(transport(bus), topics, FAKE["safety"])
    try:
        robot.connect(5.0)
        yield fake, robot
    finally:
        robot.disconnect()
        stop.set()
        thread.join()
        fake.close()


class StubArm:
    """The 7-joint arm and gripper of configs/robot/ros2_example.yaml on an in-process bus:
    publishes `pose` (NaN allowed) at 100 Hz and keeps the commands it gets, in its units."""

    JOINTS = [f"joint{i}" for i in range(1, 8)]

    def __init__(self, bus: InProcBus, pose: np.ndarray) -> None:
        self.pose, self.commands = np.array(pose, dtype=np.float64), []
        self.transport = InProcTransport(bus)
        action = EXAMPLE_TOPICS.action
        self.transport.subscribe(action.topic, action.type, lambda data, meta: (
            self.commands.append(messages.trajectory_chunk(data)[0])))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            pose = self.pose.copy()
            self.transport.publish("/joint_states", "sensor_msgs/msg/JointState",
                                   messages.joint_state(self.JOINTS, pose[:7], np.zeros(7)))
            self.transport.publish("/gripper/width", "std_msgs/msg/Float64MultiArray",
                                   messages.float_array(pose[7:]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def stub_arm(pose: np.ndarray = POSE, joint_pos: dict | None = EXAMPLE["joint_pos"],
             **safety) -> Iterator[tuple[StubArm, BridgeRobot]]:
    """A StubArm and a BridgeRobot connected to it with the example config's topics, safety
    (timeouts relaxed for a loaded test machine; `safety` overrides) and joint_pos."""
    bus = InProcBus()
    arm = StubArm(bus, pose)
    settings = {**EXAMPLE["safety"], "stale_after_s": 1.0, "watchdog_s": 1.0, **safety}
    robot = BridgeRobot(InProcTransport(bus), EXAMPLE_TOPICS, settings, joint_pos=joint_pos,
                        disconnect_after_s=1.0)
    try:
        robot.connect(5.0)
        yield arm, robot
    finally:
        robot.disconnect()
        arm.close()


def in_action_units(pose: np.ndarray) -> np.ndarray:
    low, high = np.array(EXAMPLE_TOPICS.action.low), np.array(EXAMPLE_TOPICS.action.high)
    return (pose - low) / (high - low) * 2 - 1


class StubPolicy:
    """What run_policy_episode needs of a policy: its config, reset, and act -> [1, T, D]."""

    def __init__(self, act) -> None:
        self.config = SimpleNamespace(n_obs_steps=1, n_action_steps=4)
        self._act = act

    def reset(self, num_envs: int) -> None:
        pass

    def act(self, obs: dict, generator=None, deterministic: bool = True) -> torch.Tensor:
        return self._act(obs)


# --- topic maps and decoding ------------------------------------------------------------------


def test_shipped_robot_configs_parse_and_bad_keys_are_named():
    assert TOPICS.observations["state"].sources[0].topic == "/embodied/state"
    assert TOPICS.estop == ("/embodied/estop", "std_msgs/msg/Bool")
    example = TopicMap.from_yaml(CONFIGS_DIR / "robot" / "ros2_example.yaml")
    assert example.observations["state"].shape == (15,)
    assert example.action.is_trajectory and example.action.dim == 8
    np.testing.assert_allclose(example.action.to_robot(np.full(8, -1.0)), example.action.low)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['topc'\]"):
        TopicMap.from_dict({"observations": {"state": {"topc": "/x", "type": "x"}},
                            "action": {"topic": "/c", "type": "std_msgs/Float64MultiArray"}})


def test_joint_state_source_reorders_joints_and_concatenates_fields():
    source = Source.from_dict("t", {"topic": "/joint_states", "type": "sensor_msgs/JointState",
                                    "fields": ["position", "velocity"], "joints": ["b", "a"]})
    msg = messages.normalize("sensor_msgs/msg/JointState",
                             messages.joint_state(["a", "b"], [1.0, 2.0], [10.0, 20.0]))
    np.testing.assert_array_equal(source.decode(msg), [2.0, 1.0, 20.0, 10.0])
    with pytest.raises(RobotError, match=r"joint\(s\) \['c'\] not in the message"):
        Source("/joint_states", "sensor_msgs/msg/JointState", joints=("c",)).decode(msg)


def test_compressed_image_is_decoded_and_resized():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    msg = messages.compressed_image(buf.getvalue(), format="png")
    image = Source("/cam", "sensor_msgs/msg/CompressedImage").decode(msg, (16, 16, 3))
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert tuple(image[8, 8]) == (200, 10, 10)


def test_hold_zero_dims_stop_the_deltas_and_keep_the_gripper():
    safety = SafetyLayer(SafetyConfig(-np.ones(4), np.ones(4), hold_zero_dims=(0, 1, 2)))
    safety.observe(0.0, now=0.0)
    safety.filter(np.array([0.5, -0.5, 0.2, 1.0]), now=0.0)
    safety.estop("test", now=0.01)
    np.testing.assert_array_equal(safety.filter(np.ones(4), now=0.02), [0, 0, 0, 1.0])


# --- in process: fake robot on a thread -------------------------------------------------------


def test_robot_env_steps_the_fake_robot_like_the_task():
    with inproc_robot(task_options={"max_episode_steps": 8}) as (fake, robot):
        assert robot.observation_features == {"state": (26,)}
        assert robot.action_features == {"action": (4,)}
        env = RobotEnv(robot, "push_cube", {"max_episode_steps": 8})
        obs = env.reset(seed=3)
        assert obs["state"].shape == (1, 26) and obs["state"].dtype == torch.float32
        x0 = float(obs["state"][0, 0])
        for step in range(1, 9):
            obs, reward, terminated, truncated, info = env.step(PUSH_X)
            assert info["status"].step == step  # one robot step per env step
        assert bool(truncated[0]) and int(info["episode_length"][0]) == 8
        assert float(obs["state"][0, 0]) > x0 + 0.05  # it moved the way it was told
        with pytest.raises(RuntimeError, match="call reset"):
            env.step(PUSH_X)
        assert env.reset(seed=4)["state"].shape == (1, 26)
        assert env.status.episode == 2


def test_trajectory_chunk_plays_at_its_times_then_holds_the_last_point():
    topics = TopicMap.from_dict({**FAKE["topics"], "action": {
        "topic": "/embodied/trajectory", "type": "trajectory_msgs/msg/JointTrajectory"}})
    # The first encode of a type builds its serializer (~30 ms), which would leave most of
    # the chunk's points past due on arrival: build it first.
    messages.encode(topics.action.type, messages.joint_trajectory(["a"], np.zeros((1, 1)), 0))
    # 40 ms between points (the task's real-time rate): a robot loop running 10-20 ms late on
    # a loaded machine still plays every point once.
    with inproc_robot(rate_hz=25.0, topics=topics) as (fake, robot):
        x0 = robot.get_observation()["state"][0]
        chunk = np.array([[1.0, 0, 0, 1]] * 4 + [[0.0, 0, 0, 1]])
        sent = robot.send_chunk(chunk, dt=0.04)
        np.testing.assert_array_equal(sent, chunk)
        time.sleep(0.4)
        moved = robot.get_observation()["state"][0] - x0
        time.sleep(0.2)
        still = robot.get_observation()["state"][0] - x0
        assert 0.03 < moved < 0.1  # 4 steps of up to 1.5 cm, then servo settling
        assert abs(still - moved) < 0.002  # the last point (no motion) is held


def test_silence_is_a_disconnect_that_holds_until_the_robot_is_back():
    with inproc_robot(disconnect_after_s=0.3, disconnect_for_s=0.8) as (fake, robot):
        robot.send_action(np.array([0.0, 0.0, 0.0, 0.5]))  # something to hold
        deadline = time.monotonic() + 3.0
        while robot.safety.state != "disconnected" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert robot.safety.state == "disconnected"
        held = robot.send_action(np.array([1.0, 1.0, 1.0, 1.0]))
        np.testing.assert_array_equal(held, [0.0, 0.0, 0.0, 0.5])  # deltas stop, grip kept
        while robot.safety.state != "ok" and time.monotonic() < deadline + 2.0:
            time.sleep(0.02)
        assert robot.safety.state == "ok"
        reasons = [i.reason for i in robot.safety.interventions if i.rule == "disconnect"]
        assert "no observation on ['/embodied/state']" in reasons[0] and reasons[-1] == (
            "reconnected")


# --- in process: the example arm, and the safety layer from the first command ----------------


def test_first_command_moves_from_the_measured_pose_not_from_zero():
    with stub_arm() as (arm, robot):
        sent = robot.send_action(np.full(8, 0.9))  # the policy asks for 0.9 everywhere
        start = in_action_units(POSE)
        np.testing.assert_allclose(sent, start + np.clip(0.9 - start, -0.05, 0.05))
        assert len(arm.commands) == 1
        step = 0.05 * (np.array(EXAMPLE_TOPICS.action.high) - EXAMPLE_TOPICS.action.low) / 2
        moved = arm.commands[0][0] - POSE
        assert (np.abs(moved) <= step + 1e-9).all(), moved  # at most max_delta from the pose


@pytest.mark.parametrize("stop", ["estop", "nan_action"])
def test_a_hold_before_the_first_command_holds_the_measured_pose(stop):
    with stub_arm() as (arm, robot):
        if stop == "estop":
            robot.safety.estop("operator")
        held = robot.send_action(np.full(8, 0.9) if stop == "estop" else [np.nan] * 8)
        np.testing.assert_allclose(held, in_action_units(POSE))
        np.testing.assert_allclose(arm.commands[0][0], POSE)  # stays where it is


def test_nothing_is_published_to_a_robot_that_was_never_commanded():
    # No measured position (and so no max_delta): a hold before the first command has no
    # target; nothing goes out, nor from the watchdog, nor on disconnect.
    with stub_arm(joint_pos=None, max_delta=None, watchdog_s=0.1) as (arm, robot):
        robot.safety.estop("operator")
        assert robot.send_action(np.full(8, 0.9)) is None
        assert robot.safety.hold_action() is None
        time.sleep(0.3)  # past the watchdog
    assert arm.commands == []
    with pytest.raises(ConfigError, match=r"action dims \[0, 1, 2, 3, 4, 5, 6, 7\] of robot "
                                          r"'bridge' have no measured position"):
        with stub_arm(joint_pos=None):  # max_delta needs a measured start
            pass


def test_nan_in_the_state_topic_holds_and_is_logged():
    with stub_arm() as (arm, robot):
        first = robot.send_action(in_action_units(POSE))
        arm.pose[3] = np.nan
        deadline = time.monotonic() + 3.0
        while robot.safety.state != "nonfinite":
            assert time.monotonic() < deadline, robot.safety.state
            time.sleep(0.01)
        held = robot.send_action(np.full(8, 0.9))
        np.testing.assert_array_equal(held, first)
        assert np.isfinite(np.concatenate(arm.commands)).all()
        reasons = [e.reason for e in robot.safety.interventions if e.rule == "nonfinite"]
        assert reasons == ["observation has NaN or inf (joint_pos[3]=nan, state[3]=nan): hold"]


def test_an_episode_that_never_commanded_leaves_the_robot_alone():
    def fail(obs: dict) -> torch.Tensor:
        raise RuntimeError("the policy failed")

    with inproc_robot(task_options={"max_episode_steps": 10}) as (fake, robot):
        commands = []
        spy = InProcTransport(robot.transport.bus)
        spy.subscribe("/embodied/command", "std_msgs/msg/Float64MultiArray",
                      lambda data, meta: commands.append(data["data"]))
        env = RobotEnv(robot, "push_cube", {"max_episode_steps": 10})
        with pytest.raises(RuntimeError, match="the policy failed"):
            run_policy_episode(env, StubPolicy(fail), rate_hz=100.0, seed=0)
        robot.disconnect()
        assert commands == []  # no hold at the end of the episode, nor on disconnect


class FailingCommands(InProcTransport):
    """An in-process transport whose command topic is down."""

    def publish(self, topic: str, type_name: str, data: dict) -> None:
        if topic == "/embodied/command":
            raise ConnectionError("link down")
        super().publish(topic, type_name, data)


def _run_in_thread(fn, timeout: float):
    """fn()'s result or exception, or pytest.fail when it runs over `timeout` (a hang)."""
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"still running after {timeout} s: it hangs")
    return out


def test_a_transport_that_fails_ends_the_episode_with_a_clear_error():
    options = {"max_episode_steps": 10}
    with inproc_robot(task_options=options, transport=FailingCommands) as (fake, robot):
        env = RobotEnv(robot, "push_cube", options)
        policy = StubPolicy(lambda obs: torch.zeros(1, 4, 4))
        out = _run_in_thread(lambda: run_policy_episode(env, policy, rate_hz=100.0, seed=0), 20)
    assert isinstance(out.get("error"), RobotError), out
    assert "control loop stopped at step 0: ConnectionError: link down" in str(out["error"])


def test_episode_latency_is_not_negative():
    options = {"max_episode_steps": 10}
    with inproc_robot(task_options=options) as (fake, robot):
        env = RobotEnv(robot, "push_cube", options)
        policy = StubPolicy(lambda obs: torch.zeros(1, 4, 4))  # instant: before the deadline
        result = run_policy_episode(env, policy, rate_hz=100.0, seed=0)
    # The fake robot's 10-step episode runs on its own real-time clock: on a loaded host it
    # can end before the loop's tenth step, so the count is not the point here.
    assert result["sent"] > 0 and 1 <= result["steps"] <= 10
    assert 0 <= result["latency_ms_p50"] <= result["latency_ms_p99"]


# --- loopback, real processes -----------------------------------------------------------------


def test_observation_spec_mismatch_is_a_clear_error():
    # The fake robot runs `reach` (8-dim state, 2-dim action); the policy's task is push_cube.
    generic = {"hold_mode": "zero"}
    topics = TopicMap.from_dict({**FAKE["topics"], "ee_pos": None})
    with fake_robot("zenoh", task="reach", rate_hz=50) as options:
        robot = BridgeRobot(make_transport("zenoh", **options), topics, generic)
        try:
            with pytest.raises(RobotError) as err:
                RobotEnv(robot, "push_cube")
        finally:
            robot.disconnect()
    message = str(err.value)
    assert "does not match task 'push_cube'" in message
    assert "state: the robot gives (8,), the task expects (26,)" in message
    assert "action: the robot takes (2,)" in message


def test_estop_on_the_topic_holds_the_fake_robot():
    options = {"max_episode_steps": 1000}
    with fake_robot("zenoh", task="push_cube", rate_hz=50, task_options=options) as link:
        robot = BridgeRobot(make_transport("zenoh", **link), TOPICS, FAKE["safety"])
        operator = make_transport("zenoh", **{**link, "node_name": "operator"})
        try:
            env = RobotEnv(robot, "push_cube", options)
            x = [float(env.reset(seed=0)["state"][0, 0])]
            for _ in range(6):
                obs = env.step(PUSH_X)[0]
            x.append(float(obs["state"][0, 0]))
            assert x[1] - x[0] > 0.04  # moving at ~1.5 cm per step
            deadline = time.monotonic() + 5.0
            while robot.safety.state != "estopped":  # until the link carries it
                assert time.monotonic() < deadline, "the e-stop never arrived"
                operator.publish("/embodied/estop", "std_msgs/msg/Bool", {"data": True})
                env.step(PUSH_X)
            for _ in range(8):  # the servo settles on its last target (<= 3 cm ahead)
                obs, _, _, _, info = env.step(PUSH_X)
            x.append(float(obs["state"][0, 0]))
            for _ in range(10):
                obs, _, _, _, info = env.step(PUSH_X)  # the policy keeps pushing ...
            x.append(float(obs["state"][0, 0]))
            np.testing.assert_array_equal(info["action_sent"][0], [0, 0, 0, 1])  # ... held
            assert abs(x[3] - x[2]) < 0.002, x
            estops = [i.reason for i in robot.safety.interventions if i.rule == "estop"]
            assert estops == ["e-stop latched: e-stop message on /embodied/estop"]
        finally:
            operator.close()
            robot.disconnect()


@pytest.mark.parametrize("transport", ["zenoh", "rosbridge"])
def test_deploy_runs_a_policy_on_the_fake_robot(tmp_path, transport):
    result = run_cli("deploy", f"policy={POLICY}", "task=push_cube", f"transport={transport}",
                     "episodes=2", "rate_hz=50", "+task.options.max_episode_steps=20",
                     f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["transport"] == transport
    for episode in summary["results"]:  # each ended on the robot: success or truncation
        assert episode["terminated"] or episode["steps"] == 20, episode
        assert episode["sent"] >= episode["steps"] > 0
        assert 0 <= episode["latency_ms_p50"] <= episode["latency_ms_p99"]
    assert (tmp_path / "run" / "summary.json").exists()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_killing_a_recording_keeps_every_finished_episode(tmp_path):
    repo = tmp_path / "robot_push_cube"
    proc = subprocess.Popen(
        [sys.executable, "-m", "embodied.cli", "record", "task=push_cube", "episodes=500",
         "rate_hz=50", "+task.options.max_episode_steps=12", f"repo={repo}",
         f"run_dir={tmp_path / 'run'}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            info = repo / "meta" / "info.json"
            if info.exists() and json.loads(info.read_text())["total_episodes"] >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.1)  # into the next episode
        children = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        deadline = time.monotonic() + 10  # the fake robot sees stdin close and exits
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftover = [c for c in children if _alive(c)]
        for c in leftover:
            os.kill(c, signal.SIGKILL)
    assert not leftover, "the fake robot outlived its killed parent"
    data = EpisodeDataset(repo)
    assert data.num_episodes >= 3
    for i in range(data.num_episodes):
        episode = data.episode(i)
        length = len(episode["action"])
        assert 0 < length <= 12
        assert episode["observation.state"].shape == (length, 26)
        assert episode["next.done"][-1] and not episode["next.done"][:-1].any()
    assert data.info["robot_type"] == "embodied/fake/push_cube"


def test_episode_status_json_round_trip_ignores_unknown_keys():
    status = EpisodeStatus(episode=2, step=5, reward=1.0, terminated=True, success=True)
    again = EpisodeStatus.from_json(json.dumps({**json.loads(status.to_json()), "new": 1}))
    assert again == status and again.done
