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
from embodied.sim2real.fake_robot import FakeRobot  # noqa: E402
from embodied.sim2real.launch import fake_robot  # noqa: E402
from embodied.sim2real.robot import BridgeRobot, EpisodeStatus  # noqa: E402
from embodied.sim2real.robot_env import RobotEnv  # noqa: E402
from embodied.sim2real.safety import SafetyConfig, SafetyLayer  # noqa: E402
from embodied.sim2real.topic_map import Source, TopicMap  # noqa: E402
from embodied.sim2real.transport import InProcBus, InProcTransport, make_transport  # noqa: E402

FAKE = yaml.safe_load((CONFIGS_DIR / "robot" / "fake.yaml").read_text())
TOPICS = TopicMap.from_dict(FAKE["topics"])
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
                 **knobs) -> Iterator[tuple[FakeRobot, BridgeRobot]]:
    """The fake robot on a thread and a connected BridgeRobot, over one in-process bus."""
    bus = InProcBus()
    fake = FakeRobot(InProcTransport(bus), task, rate_hz=rate_hz, **knobs)
    stop = threading.Event()
    thread = threading.Thread(target=fake.run, args=(stop,), daemon=True)
    thread.start()
    robot = BridgeRobot(InProcTransport(bus), topics, FAKE["safety"])
    try:
        robot.connect(5.0)
        yield fake, robot
    finally:
        robot.disconnect()
        stop.set()
        thread.join()
        fake.close()


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
    with inproc_robot(rate_hz=100.0, topics=topics) as (fake, robot):
        x0 = robot.get_observation()["state"][0]
        chunk = np.array([[1.0, 0, 0, 1]] * 4 + [[0.0, 0, 0, 1]])
        sent = robot.send_chunk(chunk, dt=0.01)
        np.testing.assert_array_equal(sent, chunk)
        time.sleep(0.4)
        moved = robot.get_observation()["state"][0] - x0
        time.sleep(0.2)
        still = robot.get_observation()["state"][0] - x0
        assert 0.03 < moved < 0.1  # 4 steps of up to 1.5 cm, then servo settling
        assert abs(still - moved) < 0.002  # the last point (no motion) is held


def test_silence_is_a_disconnect_that_holds_until_the_robot_is_back():
    with inproc_robot(disconnect_after_s=0.3, disconnect_for_s=0.8) as (fake, robot):
        deadline = time.monotonic() + 3.0
        while robot.safety.state != "disconnected" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert robot.safety.state == "disconnected"
        held = robot.send_action(np.array([1.0, 1.0, 1.0, 1.0]))
        np.testing.assert_array_equal(held[:3], 0.0)
        while robot.safety.state != "ok" and time.monotonic() < deadline + 2.0:
            time.sleep(0.02)
        assert robot.safety.state == "ok"
        reasons = [i.reason for i in robot.safety.interventions if i.rule == "disconnect"]
        assert "no observation on ['/embodied/state']" in reasons[0] and reasons[-1] == (
            "reconnected")


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
