"""`embodied deploy` and `embodied record`: a policy or a teleop source on a robot.

Both open the robot the same way (`open_robot`): from a robot config (`configs/robot/*.yaml`:
topics, transport endpoints, safety settings), starting the fake robot first when the config
has a `fake:` section. Then:

deploy  runs a policy through `RobotEnv` + `ChunkExecutor` + the robot's `SafetyLayer`: the
        executor sends one action per control period from its own thread, and the policy
        predicts a new chunk every `replan_every` steps from the latest observation (by
        default one step before the chunk runs out, so inference hides behind that step).
record  steps a teleop source (the task's scripted expert, acting on the robot's
        observations) through `RobotEnv`, and writes each finished episode to a LeRobot v3
        dataset at once (atomically): killing the recorder loses only the episode in
        progress. The recorded action is the one the robot was sent (after safety).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embodied.core.errors import ConfigError, RobotError
from embodied.envs import make_env
from embodied.rollout import Collector, ObsHistory, Step, check_policy_fits
from embodied.rollout.experts import ExpertPolicy
from embodied.sim2real.executor import ChunkExecutor
from embodied.sim2real.launch import fake_robot
from embodied.sim2real.robot import BridgeRobot
from embodied.sim2real.robot_env import RobotEnv
from embodied.sim2real.safety import HOLD_RULES, Intervention, KeyboardEstop, SafetyLayer
from embodied.sim2real.topic_map import TopicMap
from embodied.sim2real.transport import make_transport

logger = logging.getLogger(__name__)

TRANSPORT_KEYS = {"zenoh": ("connect", "listen", "domain_id", "mode"),
                  "rosbridge": ("host", "port", "type_style"),
                  "ros2": ("domain_id", "node_name")}


class InterventionLog:
    """Every safety intervention as a JSON line (time, rule, reason), counted by rule."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.counts = path, {}
        self._file = open(path, "a") if path is not None else None

    def __call__(self, event: Intervention) -> None:
        self.counts[event.rule] = self.counts.get(event.rule, 0) + 1
        if self._file is not None:
            self._file.write(json.dumps({"time": round(event.time, 4), "rule": event.rule,
                                         "reason": event.reason}) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextmanager
def open_robot(robot_cfg: dict[str, Any], transport: str, task: str, *,
               rate_hz: float | None = None, seed: int = 0,
               task_options: dict[str, Any] | None = None,
               safety_log: Callable[[Intervention], None] | None = None) -> Iterator[BridgeRobot]:
    """A BridgeRobot for `robot_cfg` over `transport` (not yet connected); with a `fake:`
    section, the fake robot process runs `task` for the duration of the block."""
    if transport not in TRANSPORT_KEYS:
        raise ConfigError(f"transport must be one of {list(TRANSPORT_KEYS)}, got {transport!r}")
    topics = TopicMap.from_dict(robot_cfg["topics"])
    with ExitStack() as stack:
        if robot_cfg.get("fake") is not None:
            options = stack.enter_context(fake_robot(
                transport, task=task, rate_hz=rate_hz, seed=seed, task_options=task_options,
                **robot_cfg["fake"]))
        else:
            given = dict(robot_cfg.get(transport) or {})
            options = {k: v for k, v in given.items() if k in TRANSPORT_KEYS[transport]}
        if transport == "ros2":  # QoS by role: both sides derive it from the topic map
            options["roles"] = topics.qos_roles()
        link = make_transport(transport, **options)
        stack.callback(link.close)  # also when BridgeRobot refuses its settings
        robot = BridgeRobot(link, topics,
                            robot_cfg.get("safety"),
                            disconnect_after_s=float(robot_cfg.get("disconnect_after_s", 0.5)),
                            name=str(robot_cfg.get("name", "robot")), safety_log=safety_log,
                            joint_pos=robot_cfg.get("joint_pos"))
        stack.callback(robot.disconnect)  # before the fake robot stops (LIFO)
        yield robot


def _why_held(safety: SafetyLayer) -> str:
    holds = [e.reason for e in safety.interventions if e.rule in HOLD_RULES]
    return holds[-1] if holds else f"safety state {safety.state!r}"


def run_policy_episode(env: RobotEnv, policy: Any, *, rate_hz: float, seed: int,
                       merge: str = "replace", replan_every: int | None = None,
                       deterministic: bool = True) -> dict[str, Any]:
    """One episode of `policy` on the robot behind `env`; returns its outcome and the
    executor's timing statistics. Raises a RobotError when the control loop dies (say the
    transport fails) or when the safety layer let no command through all episode."""
    robot, cfg = env.robot, policy.config
    every = replan_every or max(1, cfg.n_action_steps - 1)
    policy.reset(1)  # stateful policies (ResiP's base queue) start a new episode
    obs = env.reset(seed=seed)
    # Each observation's step and time tag the chunk planned from it (stale rows, latency).
    obs_step, obs_time = 0, time.monotonic()
    history = ObsHistory(cfg.n_obs_steps)  # the collector's: what evaluation feeds it
    history.start(obs)
    executor = ChunkExecutor(robot.publish_command, rate_hz, merge=merge, safety=robot.safety)
    generator = torch.Generator().manual_seed(seed)
    status, next_plan, start = env.status, 0, time.monotonic()
    # A robot with an episode status ends its episodes (our count runs a few steps ahead of
    # its count); for one without, the episode is truncated here.
    limit = env.max_episode_steps * (1 if status is None else 2)
    try:
        with torch.no_grad():
            while not (status is not None and status.done):
                executor.check()  # a dead control loop never advances: stop, do not wait
                if obs_step >= limit:
                    break
                if obs_step >= next_plan:
                    chunk = policy.act(history.get(), generator=generator,
                                       deterministic=deterministic)[0]
                    executor.submit(chunk.double().numpy(), obs_step, obs_time)
                    if not executor.running:
                        executor.start()
                    next_plan = obs_step + every
                obs, status = env.observe()
                obs_step, obs_time = executor.step_index, time.monotonic()
                history.push(obs)
    finally:
        try:
            executor.stop()  # raises what stopped the control loop, if anything did
        finally:
            try:
                robot.send_hold()  # leave the robot held, not moving (if ever commanded)
            except Exception:  # keep the error in flight; disconnect tries the hold again
                logger.exception("could not send the hold at the end of the episode")
    stats = {k: (round(v, 3) if isinstance(v, float) else v)
             for k, v in executor.stats().items()}
    stats["executor_steps"] = stats.pop("steps")
    if not stats["sent"]:
        raise RobotError(f"no command was sent in the episode with seed {seed}: the safety "
                         f"layer held every one ({_why_held(robot.safety)}); the robot was "
                         "not moved. Fix that cause (the interventions log has each one)")
    return {"seed": seed, "success": bool(status.episode_success) if status else None,
            "steps": status.step if status else stats["executor_steps"],
            "return": status.episode_return if status else None,
            "terminated": bool(status and status.terminated),
            "seconds": round(time.monotonic() - start, 3), **stats}


def deploy(robot_cfg: dict[str, Any], policy_path: str, task: str, *, transport: str = "zenoh",
           episodes: int = 1, seed: int = 0, rate_hz: float | None = None,
           merge: str = "replace", replan_every: int | None = None, deterministic: bool = True,
           task_options: dict[str, Any] | None = None, obs_timeout_s: float = 1.0,
           connect_timeout_s: float = 30.0, run_dir: Path | None = None) -> dict[str, Any]:
    """Run `episodes` episodes of the policy at `policy_path` on the robot; a summary."""
    from embodied.policies.residual import load_policy

    policy = load_policy(policy_path)
    policy.eval()
    spec = make_env(task, num_envs=1, nthread=1, **(task_options or {}))
    check_policy_fits(policy.config, spec.obs_dim, spec.action_dim, task)
    spec.close()
    log = InterventionLog(None if run_dir is None else Path(run_dir) / "interventions.jsonl")
    results = []
    try:
        with open_robot(robot_cfg, transport, task, rate_hz=rate_hz, seed=seed,
                        task_options=task_options, safety_log=log) as robot:
            env = RobotEnv(robot, task, task_options, obs_timeout_s=obs_timeout_s,
                           connect_timeout_s=connect_timeout_s)
            rate = float(rate_hz or 1.0 / env.dt)
            keys = KeyboardEstop(robot.safety)  # space / e, when run in a terminal
            if keys.start():
                print("e-stop: press space or e (it latches for the rest of the run)")
            try:
                for i in range(episodes):
                    result = run_policy_episode(env, policy, rate_hz=rate, seed=seed + i,
                                                merge=merge, replan_every=replan_every,
                                                deterministic=deterministic)
                    results.append(result)
                    print(f"episode {i}: success {result['success']} in {result['steps']} "
                          f"steps ({result['seconds']} s); sent {result['sent']}, deadline "
                          f"misses {result['deadline_misses']}, jitter p99 "
                          f"{result['jitter_ms_p99']} ms; safety: {robot.safety.state}",
                          flush=True)
            finally:
                keys.stop()
            env.close()
    finally:
        log.close()
    successes = [r["success"] for r in results if r["success"] is not None]
    return {"task": task, "policy": str(policy_path), "robot": robot_cfg.get("name"),
            "transport": transport, "rate_hz": rate, "episodes": len(results),
            "success_rate": float(np.mean(successes)) if successes else None,
            "deadline_misses": int(sum(r["deadline_misses"] for r in results)),
            "jitter_ms_p99": max((r["jitter_ms_p99"] for r in results), default=None),
            "interventions": dict(log.counts), "results": results}


def record(robot_cfg: dict[str, Any], task: str, repo: str | Path, *, transport: str = "zenoh",
           episodes: int = 1, teleop: str = "expert", noise: float = 0.0, seed: int = 0,
           rate_hz: float | None = None, task_options: dict[str, Any] | None = None,
           obs_timeout_s: float = 1.0, connect_timeout_s: float = 30.0,
           run_dir: Path | None = None) -> dict[str, Any]:
    """Record `episodes` teleoperated episodes from the robot into the dataset at `repo`."""
    from embodied.data.collect import dataset_features
    from embodied.data.dataset import DatasetWriter
    from embodied.data.experts import make_expert

    if teleop != "expert":
        raise ConfigError(f"teleop {teleop!r} is not available; use teleop=expert (the task's "
                          "scripted expert, acting on the robot's observations)")
    expert = make_expert(task, 1, noise=noise, generator=torch.Generator().manual_seed(seed + 1))
    log = InterventionLog(None if run_dir is None else Path(run_dir) / "interventions.jsonl")
    kept, successes, start = [], 0, time.monotonic()
    try:
        with open_robot(robot_cfg, transport, task, rate_hz=rate_hz, seed=seed,
                        task_options=task_options, safety_log=log) as robot:
            env = RobotEnv(robot, task, task_options, obs_timeout_s=obs_timeout_s,
                           connect_timeout_s=connect_timeout_s)
            fps = int(round(rate_hz or 1.0 / env.dt))
            text = env.task.description or task
            with DatasetWriter(repo, dataset_features(env), fps=fps,
                               robot_type=f"embodied/{robot_cfg.get('name')}/{task}") as writer, \
                    KeyboardEstop(robot.safety):
                for i in range(episodes):
                    frames, success = _teleop_episode(env, expert, seed + i)
                    index = writer.add_episode(frames, task=text)  # durable from here on
                    kept.append(len(frames["action"]))
                    successes += success
                    print(f"episode {index}: {kept[-1]} frames, success {success}", flush=True)
                total_episodes = writer.num_episodes
            env.close()
    finally:
        log.close()
    return {"task": task, "dataset": str(repo), "episodes": len(kept),
            "dataset_episodes": total_episodes, "frames": int(sum(kept)),
            "success_rate": successes / max(len(kept), 1), "fps": fps,
            "interventions": dict(log.counts), "seconds": round(time.monotonic() - start, 1)}


def _teleop_episode(env: RobotEnv, expert: Any, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """One episode of the expert on the robot, through the collector; the frames to store
    (the action stored is the one sent, after the safety layer)."""
    rows: dict[str, list[np.ndarray]] = {k: [] for k in (
        "observation.state", "action", "next.reward", "next.done", "next.terminated",
        "next.success")}

    def record(step: Step, info: dict) -> None:
        # NaN: nothing was sent (the safety layer held before any command, with nothing to
        # hold at), so the robot did not act: no frame. Only the first steps can be such.
        if info["action_sent"].isnan().any():
            return
        done = bool(step.terminated[0] | step.truncated[0])
        for key, value in (("observation.state", step.obs["state"][0, -1]),
                           ("action", info["action_sent"][0]), ("next.reward", step.reward[0]),
                           ("next.done", done), ("next.terminated", step.terminated[0]),
                           ("next.success", info["success"][0])):
            rows[key].append(np.asarray(value))

    collector = Collector(env, ExpertPolicy(expert, env.obs_dim, env.action_dim))
    collector.reset(seed=seed)
    result = collector.first_episodes(on_step=record)
    if not rows["action"]:
        raise RobotError(f"no command was sent in the episode with seed {seed}: the "
                         f"safety layer held every one ({_why_held(env.robot.safety)})")
    return {k: np.stack(v) for k, v in rows.items()}, bool(result["success"][0])
