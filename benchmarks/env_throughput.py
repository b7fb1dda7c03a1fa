"""Environment throughput: our batched CPU backend vs gymnasium's vector envs vs the ceiling.

    python benchmarks/env_throughput.py [--seconds 5] [--threads 0]

All figures are physics steps per second (env steps x frame_skip), measured in one run on
the same model with uniformly random actions and auto-reset:
  ours@N        our MujocoVecEnv with N envs (Ant at 64, 256, 1024; a manipulation task);
                Ant's default contact_forces="in_step", plus one row with "gymnasium"
  gym_sync      gymnasium SyncVectorEnv of Ant-v5 (8 envs)
  gym_async     gymnasium AsyncVectorEnv of Ant-v5 (one process per env, 8 envs)
  ceiling       raw single-thread mj_step rate on the same model x the threads we use
The last line is JSON with `ours`, `gym_sync`, `gym_async`, `ceiling` for Ant at 256 envs.
Targets: ours >= 2.5x the better gymnasium vector env, and >= 80% of the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import gymnasium as gym
import mujoco
import numpy as np
import torch

from embodied.envs import make_env


def timed(step, seconds: float, warmup: int = 3) -> tuple[int, float]:
    for _ in range(warmup):
        step()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls, time.perf_counter() - start


def ours(task: str, num_envs: int, seconds: float, threads: int, **options) -> float:
    env = make_env(task, num_envs=num_envs, nthread=threads, **options)
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    actions = [torch.rand((num_envs, env.action_dim), generator=g) * 2 - 1 for _ in range(16)]
    k = iter(range(10**9))

    def step():
        env.step(actions[next(k) % len(actions)])

    calls, elapsed = timed(step, seconds)
    return calls * num_envs * env.task.frame_skip / elapsed


def gym_vector(kind: str, env_id: str, num_envs: int, seconds: float, frame_skip: int) -> float:
    cls = gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv
    envs = cls([lambda: gym.make(env_id) for _ in range(num_envs)])
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, envs.action_space.shape) for _ in range(16)]
    k = iter(range(10**9))
    calls, elapsed = timed(lambda: envs.step(actions[next(k) % len(actions)]), seconds)
    envs.close()
    return calls * num_envs * frame_skip / elapsed


def raw_mj_step(env_id: str, seconds: float) -> float:
    """Single-thread mj_step rate on gymnasium's own env (same model, same state path)."""
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    model, data = env.model, env.data
    rng = np.random.default_rng(0)
    frame_skip = env.frame_skip

    def step():
        data.ctrl[:] = rng.uniform(-1, 1, model.nu)
        mujoco.mj_step(model, data, nstep=frame_skip)
        if not env.is_healthy:
            env.reset()

    calls, elapsed = timed(step, seconds)
    return calls * frame_skip / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=0, help="0: all cores")
    parser.add_argument("--manipulation", default="pick_place")
    args = parser.parse_args()
    torch.set_num_threads(1)
    threads = args.threads or os.cpu_count() or 1
    s = args.seconds
    ant_skip = 5

    raw = raw_mj_step("Ant-v5", s)
    ceiling = raw * threads
    rows = {f"ours@{n}": ours("ant", n, s, threads) for n in (64, 256, 1024)}
    rows["ours@256 (contact_forces=gymnasium)"] = ours("ant", 256, s, threads,
                                                       contact_forces="gymnasium")
    rows["gym_sync@8"] = gym_vector("sync", "Ant-v5", 8, s, ant_skip)
    rows["gym_async@8"] = gym_vector("async", "Ant-v5", 8, s, ant_skip)
    manip = {}
    try:
        manip = {f"{args.manipulation}@{n}": ours(args.manipulation, n, s, threads)
                 for n in (64, 256)}
    except Exception as e:  # the table still reports Ant if the task is unavailable
        print(f"(manipulation task skipped: {e})")

    print(f"\nAnt (gymnasium Ant-v5 model), {threads} threads, physics steps/s")
    print(f"{'raw mj_step, 1 thread':40s} {raw:>10,.0f}")
    print(f"{'ceiling (raw x threads)':40s} {ceiling:>10,.0f}")
    best_gym = max(rows["gym_sync@8"], rows["gym_async@8"])
    for name, value in rows.items():
        print(f"{name:40s} {value:>10,.0f}   {value / ceiling:6.1%} of ceiling  "
              f"{value / best_gym:5.2f}x best gym")
    for name, value in manip.items():
        print(f"{name:40s} {value:>10,.0f}   (manipulation, physics steps/s)")
    result = {
        "task": "ant", "num_envs": 256, "threads": threads,
        "ours": round(rows["ours@256"]), "gym_sync": round(rows["gym_sync@8"]),
        "gym_async": round(rows["gym_async@8"]), "ceiling": round(ceiling),
        "ours_over_best_gym": round(rows["ours@256"] / best_gym, 2),
        "ours_over_ceiling": round(rows["ours@256"] / ceiling, 3),
        "ours_gymnasium_contacts_over_ceiling": round(
            rows["ours@256 (contact_forces=gymnasium)"] / ceiling, 3),
        **{k.replace("@", "_"): round(v) for k, v in manip.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
