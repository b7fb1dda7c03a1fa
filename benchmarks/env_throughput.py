"""Environment throughput: our batched CPU backend vs EnvPool, gymnasium and the ceiling.

    python benchmarks/env_throughput.py [--seconds 5] [--threads 0] [--repeat 3]

All figures are physics steps per second (env steps x frame_skip), measured in one run on
the same model with uniformly random actions and auto-reset:
  ours@N        our MujocoVecEnv with N envs (Ant at 64, 256, 1024; a manipulation task);
                Ant's default contact_forces="in_step", plus one row with "gymnasium"
  envpool@N     EnvPool's Ant-v5 (the C++ vector env, `pip install envpool`, an optional
                peer: skipped when not installed) with N envs on the same threads; ours@N
                and envpool@N run interleaved, best of --repeat runs each
  gym_sync      gymnasium SyncVectorEnv of Ant-v5 (8 envs)
  gym_async     gymnasium AsyncVectorEnv of Ant-v5 (one process per env, 8 envs)
  ceiling       raw single-thread mj_step rate on the same model x the threads we use
The last line is JSON with `ours`, `envpool`, `gym_sync`, `gym_async`, `ceiling` for Ant at
256 envs, and `ours_N`, `envpool_N`, `ours_over_envpool_N` for each N.
Targets: ours >= 2.5x the better gymnasium vector env, >= 80% of the ceiling, and >= EnvPool.
On a shared machine compare the ratios, not the absolute figures, of one run.
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


def ours_stepper(task: str, num_envs: int, threads: int, **options):
    """A function that runs one env step, and the physics steps it makes."""
    env = make_env(task, num_envs=num_envs, nthread=threads, **options)
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    actions = [torch.rand((num_envs, env.action_dim), generator=g) * 2 - 1 for _ in range(16)]
    k = iter(range(10**9))
    return lambda: env.step(actions[next(k) % len(actions)]), num_envs * env.task.frame_skip


def envpool_stepper(num_envs: int, threads: int):
    """EnvPool's Ant-v5 as ours_stepper does ours, or None if envpool is not installed."""
    try:
        import envpool
    except ImportError:
        return None
    env = envpool.make("Ant-v5", env_type="gymnasium", num_envs=num_envs,
                       num_threads=threads, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, (num_envs, 8)) for _ in range(16)]
    k = iter(range(10**9))
    return lambda: env.step(actions[next(k) % len(actions)]), num_envs * env.spec.config.frame_skip


def rate(stepper, seconds: float) -> float:
    step, physics_steps = stepper
    calls, elapsed = timed(step, seconds)
    return calls * physics_steps / elapsed


def ours(task: str, num_envs: int, seconds: float, threads: int, **options) -> float:
    return rate(ours_stepper(task, num_envs, threads, **options), seconds)


def best_interleaved(steppers: dict, seconds: float, repeat: int) -> dict[str, float]:
    """Best rate of each over `repeat` alternating runs: load from other jobs on the machine
    then hits both alike, and the best run is the one least disturbed."""
    rates = {name: 0.0 for name in steppers}
    for _ in range(repeat):
        for name, stepper in steppers.items():
            rates[name] = max(rates[name], rate(stepper, seconds))
    return rates


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
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved runs of ours and EnvPool at each size (best kept)")
    parser.add_argument("--manipulation", default="pick_place")
    args = parser.parse_args()
    torch.set_num_threads(1)  # torch's intra-op threads would compete with MuJoCo's
    threads = args.threads or os.cpu_count() or 1
    s = args.seconds
    ant_skip = 5

    raw = raw_mj_step("Ant-v5", s)
    ceiling = raw * threads
    rows, peer = {}, {}
    for n in (64, 256, 1024):
        steppers = {"ours": ours_stepper("ant", n, threads)}
        pool = envpool_stepper(n, threads)
        if pool is not None:
            steppers["envpool"] = pool
        best = best_interleaved(steppers, s, args.repeat)
        rows[f"ours@{n}"] = best["ours"]
        if pool is not None:
            peer[n] = best["envpool"]
        del steppers, pool  # free each size's envs (and EnvPool's threads) before the next
    if not peer:
        print("(EnvPool not installed, so no peer column: `pip install envpool` to add it)")
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
    for n, value in peer.items():
        print(f"{f'envpool@{n}':40s} {value:>10,.0f}   {value / ceiling:6.1%} of ceiling  "
              f"ours@{n} / envpool@{n} {rows[f'ours@{n}'] / value:5.2f}x")
    if 256 in peer:  # EnvPool computes contact forces as gymnasium does
        print(f"ours@256 (contact_forces=gymnasium) / envpool@256 "
              f"{rows['ours@256 (contact_forces=gymnasium)'] / peer[256]:5.2f}x")
    for name, value in manip.items():
        print(f"{name:40s} {value:>10,.0f}   (manipulation, physics steps/s)")
    result = {
        "task": "ant", "num_envs": 256, "threads": threads,
        "ours": round(rows["ours@256"]),
        "envpool": round(peer[256]) if 256 in peer else None,
        "ours_over_envpool": round(rows["ours@256"] / peer[256], 3) if 256 in peer else None,
        "gym_sync": round(rows["gym_sync@8"]),
        "gym_async": round(rows["gym_async@8"]), "ceiling": round(ceiling),
        "ours_over_best_gym": round(rows["ours@256"] / best_gym, 2),
        "ours_over_ceiling": round(rows["ours@256"] / ceiling, 3),
        "ours_gymnasium_contacts_over_ceiling": round(
            rows["ours@256 (contact_forces=gymnasium)"] / ceiling, 3),
        **{k.replace("@", "_"): round(v) for k, v in manip.items()},
    }
    for n in (64, 256, 1024):
        result[f"ours_{n}"] = round(rows[f"ours@{n}"])
        result[f"envpool_{n}"] = round(peer[n]) if n in peer else None
        result[f"ours_over_envpool_{n}"] = (round(rows[f"ours@{n}"] / peer[n], 3)
                                           if n in peer else None)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
