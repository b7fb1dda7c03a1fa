"""A fake robot: a built-in MuJoCo task stepping in real time behind a bridge transport.

    python -m embodied.sim2real.fake_robot --task push_cube --transport zenoh \
        --listen tcp/127.0.0.1:7447 [--rate 25] [--latency-ms 20] [--drop 0.05] \
        [--disconnect-after-s 5 --disconnect-for-s 1] [--option max_episode_steps=50]

It stands in for a robot and its ROS driver, so deployment and recording run end to end
(tests, dry runs) with the same transports, topics and messages as a real robot. Each
period (1 / rate; the default 1 / task dt is real time, higher rates run faster than real
time) it applies the latest command, steps the simulation one env step and publishes:

    /embodied/status   std_msgs/String, EpisodeStatus JSON (episode, step, reward, done, ...)
    /embodied/state    std_msgs/Float64MultiArray, the task's state observation
    /joint_states      sensor_msgs/JointState of the actuated joints (for ROS tools)

and listens to:

    /embodied/command     std_msgs/Float64MultiArray, one action, held until the next one
    /embodied/trajectory  trajectory_msgs/JointTrajectory, a chunk: point k is applied from
                          header stamp (0: receipt) + time_from_start on
    /embodied/reset       std_msgs/String, {"id": n, "seed": s}: a new episode (once per id)

An episode starts stepping at its first command (so its step count matches simulation) and
stops at termination or truncation: the robot then keeps publishing the final observation
and a done status until the next reset. Knobs for testing what the bridge must survive:
`--latency-ms` delays, `--drop` drops (each message with that probability) every outgoing
message, and `--disconnect-after-s` goes silent (deaf too) for `--disconnect-for-s` (0:
for good). The process exits on SIGTERM, or with `--exit-on-eof` when its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from typing import Any

import mujoco
import numpy as np
import torch

from embodied.envs import make_env
from embodied.sim2real import messages
from embodied.sim2real.robot import EpisodeStatus
from embodied.sim2real.topic_map import STRING
from embodied.sim2real.transport import Meta, Transport, make_transport

log = logging.getLogger(__name__)

STATE_TOPIC, STATE_TYPE = "/embodied/state", "std_msgs/msg/Float64MultiArray"
JOINTS_TOPIC, JOINTS_TYPE = "/joint_states", "sensor_msgs/msg/JointState"
STATUS_TOPIC = "/embodied/status"
COMMAND_TOPIC, COMMAND_TYPE = "/embodied/command", "std_msgs/msg/Float64MultiArray"
TRAJECTORY_TOPIC, TRAJECTORY_TYPE = "/embodied/trajectory", "trajectory_msgs/msg/JointTrajectory"
RESET_TOPIC = "/embodied/reset"
# QoS roles over ros2, as configs/robot/fake.yaml's topic map gives them to the other side.
QOS_ROLES = {STATE_TOPIC: "sensor", JOINTS_TOPIC: "sensor", STATUS_TOPIC: "latched",
             COMMAND_TOPIC: "command", TRAJECTORY_TOPIC: "command", RESET_TOPIC: "command"}


class _Outbox:
    """Outgoing messages through the knobs: silence window, random drops, fixed latency."""

    def __init__(self, transport: Transport, latency_s: float, drop: float,
                 rng: np.random.Generator) -> None:
        self.transport, self.latency_s, self.drop, self.rng = transport, latency_s, drop, rng
        self.sent = self.dropped = 0
        self._queue: deque[tuple[float, str, str, dict]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = None
        if latency_s > 0:
            self._thread = threading.Thread(target=self._deliver, name="fake-robot-latency",
                                            daemon=True)
            self._thread.start()

    def publish(self, topic: str, type_name: str, msg: dict[str, Any]) -> None:
        if self.drop > 0 and self.rng.random() < self.drop:
            self.dropped += 1
            return
        self.sent += 1
        if self._thread is None:
            self.transport.publish(topic, type_name, msg)
            return
        with self._cond:
            self._queue.append((time.monotonic() + self.latency_s, topic, type_name, msg))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _deliver(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                due, topic, type_name, msg = self._queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._queue.popleft()
            self.transport.publish(topic, type_name, msg)


class FakeRobot:
    """The robot side of the bridge, on any transport; `run` until `stop` is set."""

    def __init__(self, transport: Transport, task: str, *, rate_hz: float | None = None,
                 seed: int = 0, latency_ms: float = 0.0, drop: float = 0.0,
                 disconnect_after_s: float | None = None, disconnect_for_s: float = 0.0,
                 task_options: dict[str, Any] | None = None) -> None:
        if not 0 <= drop < 1:
            raise ValueError(f"drop must be in [0, 1), got {drop}")
        self.transport = transport
        self.env = make_env(task, num_envs=1, nthread=1, **(task_options or {}))
        self.task = task
        self.rate_hz = float(rate_hz or 1.0 / self.env.dt)
        if not 0 < self.rate_hz <= 1000:
            raise ValueError(f"rate must be in (0, 1000] Hz, got {self.rate_hz}")
        self.period = 1.0 / self.rate_hz
        self.disconnect_after_s, self.disconnect_for_s = disconnect_after_s, disconnect_for_s
        self.outbox = _Outbox(transport, latency_ms / 1e3, drop, np.random.default_rng(seed))
        self._lock = threading.Lock()
        self._command: np.ndarray | None = None
        self._trajectory: tuple[np.ndarray, np.ndarray] | None = None  # (chunk, due times)
        self._reset_request: tuple[int, int | None] | None = None
        self._joints = _actuated_joints(self.env.model)
        self._start = time.monotonic()
        self.steps = 0
        self._new_episode(seed, reset_id=0, episode=0)
        transport.subscribe(COMMAND_TOPIC, COMMAND_TYPE, self._on_command)
        transport.subscribe(TRAJECTORY_TOPIC, TRAJECTORY_TYPE, self._on_trajectory)
        transport.subscribe(RESET_TOPIC, STRING, self._on_reset)

    # --- callbacks (transport thread) ---------------------------------------------------------

    def _on_command(self, data: dict[str, Any], meta: Meta) -> None:
        action = np.asarray(data["data"], dtype=np.float64)
        if self._deaf() or not self._check_dim(action, meta.topic):
            return
        with self._lock:
            self._command, self._trajectory = action, None

    def _on_trajectory(self, data: dict[str, Any], meta: Meta) -> None:
        chunk, offsets = messages.trajectory_chunk(data)
        if self._deaf() or not len(chunk) or not self._check_dim(chunk[0], meta.topic):
            return
        stamp_ns = messages.stamp_ns(data["header"]["stamp"])
        # Header stamps are wall clock (ROS time); due times are kept on our monotonic clock.
        start = time.monotonic() - (time.time_ns() - stamp_ns) / 1e9 if stamp_ns else (
            meta.recv_mono_ns / 1e9)
        with self._lock:
            self._trajectory = (chunk, start + offsets)

    def _on_reset(self, data: dict[str, Any], meta: Meta) -> None:
        if self._deaf():
            return
        try:
            request = json.loads(data["data"])
            self._reset_request = (int(request["id"]), request.get("seed"))
        except (ValueError, KeyError, TypeError):
            log.error("ignoring reset %r on %s: expected {\"id\": n, \"seed\": s}",
                      data["data"], meta.topic)

    # --- control loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Step and publish once per period (absolute deadlines: missed periods are skipped,
        not run in a burst) until `stop` is set."""
        deadline = time.monotonic()
        while not stop.is_set():
            self.step_once()
            deadline += self.period
            now = time.monotonic()
            if now > deadline:
                deadline += (now - deadline) // self.period * self.period + self.period
            stop.wait(deadline - now)

    def step_once(self) -> None:
        request = self._reset_request
        if request is not None and request[0] != self.status.reset_id:
            self._new_episode(request[1], reset_id=request[0], episode=self.status.episode + 1)
        action = self._current_action()
        if action is not None and not self.status.done:
            self._step(action)
        self._publish()

    def close(self) -> None:
        self.outbox.close()
        self.env.close()

    # --- internals ----------------------------------------------------------------------------

    def _new_episode(self, seed: int | None, reset_id: int, episode: int) -> None:
        obs = self.env.reset(seed=None if seed is None else int(seed))
        with self._lock:
            self._command = self._trajectory = None  # commands of the last episode are void
        self._obs = obs["state"][0].numpy().astype(np.float64)
        self._joint_msg = self._joint_state()
        self.status = EpisodeStatus(episode=episode, reset_id=reset_id,
                                    action_dim=self.env.action_dim, task=self.task)

    def _current_action(self) -> np.ndarray | None:
        with self._lock:
            if self._trajectory is not None:
                chunk, due = self._trajectory
                k = int(np.searchsorted(due, time.monotonic(), side="right")) - 1
                if k >= 0:
                    self._command = chunk[k]
            return self._command

    def _step(self, action: np.ndarray) -> None:
        obs, reward, terminated, truncated, info = self.env.step(
            torch.as_tensor(action[None], dtype=torch.float32))
        done = bool(terminated[0] | truncated[0])
        # The VecEnv resets a finished env at once; keep publishing how the episode ended.
        state = info["final_obs"]["state"] if done else obs["state"]
        self._obs = state[0].numpy().astype(np.float64)
        if not done:
            self._joint_msg = self._joint_state()
        s = self.status
        success = bool(info["success"][0])
        self.status = EpisodeStatus(
            episode=s.episode, reset_id=s.reset_id, step=s.step + 1, reward=float(reward[0]),
            terminated=bool(terminated[0]), truncated=bool(truncated[0]), success=success,
            episode_success=s.episode_success or success,
            episode_return=s.episode_return + float(reward[0]), action_dim=s.action_dim,
            task=s.task)
        self.steps += 1

    def _publish(self) -> None:
        if self._deaf():
            return
        joints = {**self._joint_msg, "header": messages.header(time.time_ns())}
        # Status first: a reader that sees a new state has that period's status already.
        self.outbox.publish(STATUS_TOPIC, STRING, {"data": self.status.to_json()})
        self.outbox.publish(STATE_TOPIC, STATE_TYPE, messages.float_array(self._obs))
        self.outbox.publish(JOINTS_TOPIC, JOINTS_TYPE, joints)

    def _joint_state(self) -> dict[str, Any]:
        qpos, qvel = self.env.sim.field("qpos")[0], self.env.sim.field("qvel")[0]
        names = [name for name, _, _ in self._joints]
        return messages.joint_state(names, [float(qpos[q]) for _, q, _ in self._joints],
                                    [float(qvel[v]) for _, _, v in self._joints])

    def _deaf(self) -> bool:
        """Inside the simulated disconnect: nothing goes out, nothing comes in."""
        if self.disconnect_after_s is None:
            return False
        since = time.monotonic() - self._start - self.disconnect_after_s
        return since >= 0 and (self.disconnect_for_s <= 0 or since < self.disconnect_for_s)

    def _check_dim(self, action: np.ndarray, topic: str) -> bool:
        if action.shape == (self.env.action_dim,) and np.isfinite(action).all():
            return True
        log.error("ignoring a command on %s with shape %s (task %s takes %d finite values)",
                  topic, action.shape, self.task, self.env.action_dim)
        return False


def _actuated_joints(model: mujoco.MjModel) -> list[tuple[str, int, int]]:
    """(name, qpos address, dof address) of each joint an actuator drives (slide/hinge)."""
    out = []
    for a in range(model.nu):
        if model.actuator_trntype[a] != mujoco.mjtTrn.mjTRN_JOINT:
            continue
        j = int(model.actuator_trnid[a, 0])
        if model.jnt_type[j] in (mujoco.mjtJoint.mjJNT_SLIDE, mujoco.mjtJoint.mjJNT_HINGE):
            name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) or f"joint{j}"
            out.append((name, int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j])))
    return out


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option takes key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="push_cube")
    p.add_argument("--transport", choices=("zenoh", "rosbridge", "ros2"), default="zenoh")
    p.add_argument("--listen", action="append", help="zenoh endpoint to listen on")
    p.add_argument("--connect", action="append", help="zenoh endpoint to connect to")
    p.add_argument("--domain-id", type=int, default=0, help="zenoh or ROS 2 (DDS) domain")
    p.add_argument("--host", default="127.0.0.1", help="rosbridge server host")
    p.add_argument("--port", type=int, default=9090, help="rosbridge server port")
    p.add_argument("--rate", type=float, default=None, help="Hz; default 1/dt (real time)")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--disconnect-after-s", type=float, default=None)
    p.add_argument("--disconnect-for-s", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", type=_option, action="append", default=[],
                   help="task option key=value (JSON value), e.g. max_episode_steps=50")
    p.add_argument("--exit-on-eof", action="store_true",
                   help="exit when stdin closes, so a parent's death ends this process too")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="fake_robot: %(levelname)s %(message)s")
    torch.set_num_threads(1)
    if args.transport == "zenoh":
        options = {"listen": args.listen, "connect": args.connect or [],
                   "domain_id": args.domain_id, "node_name": "fake_robot"}
    elif args.transport == "ros2":
        options = {"domain_id": args.domain_id, "node_name": "fake_robot", "roles": QOS_ROLES}
    else:
        options = {"host": args.host, "port": args.port}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with make_transport(args.transport, **options) as transport:
        robot = FakeRobot(transport, args.task, rate_hz=args.rate, seed=args.seed,
                          latency_ms=args.latency_ms, drop=args.drop,
                          disconnect_after_s=args.disconnect_after_s,
                          disconnect_for_s=args.disconnect_for_s, task_options=dict(args.option))
        if args.exit_on_eof:
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        print(f"ready: {args.task} at {robot.rate_hz:g} Hz over {args.transport}", flush=True)
        try:
            robot.run(stop)
        except KeyboardInterrupt:
            pass
        finally:
            robot.close()


if __name__ == "__main__":
    main()
