"""Fine-tuning loop throughput: env steps/s of the whole on-policy loop (collector, policy,
PPO update; evaluation excluded) against the raw env at the same number of envs.

    python benchmarks/loop_throughput.py [--task pick_place] [--num-envs 64]
                                         [--algo flow_sde] [--iterations 8]
                                         [--set FIELD=VALUE ...]

Runs the quickstart's algorithm (flow_sde on the shipped `<task>_flow` base, the code path
of `embodied finetune`) for --iterations after one warm-up iteration, and measures in the
same run, before and after it (their mean, so a load change shows as a spread):
  raw_env_steps_per_s          random actions with auto-reset: the loop's ceiling
  policy_action_steps_per_s    the env replaying the base policy's own actions (grasping
                               costs the simulator more than random actions)
Figures: loop_env_steps_per_s, loop_over_env_throughput (target >= 0.5),
loop_over_policy_action_throughput, and the shares of an iteration spent in the simulator,
the policy (sampling and values) and the update. The last line is JSON. Under 5 minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import yaml
from finetune import policy_action_throughput, raw_env_throughput  # benchmarks/finetune.py

from embodied.algos import make_finetune
from embodied.core.paths import ASSETS_DIR
from embodied.policies.policy import ChunkPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="pick_place")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--algo", default="flow_sde")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an algorithm config field (YAML value), repeatable")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes FIELD=VALUE, got {item!r}")
        overrides[field] = yaml.safe_load(value)
    os.environ.setdefault("MUJOCO_GL", "egl")
    torch.set_num_threads(2)  # as `embodied finetune` (torch_threads: 2)

    raw = [raw_env_throughput(args.task, args.num_envs, seconds=4.0)]
    replay = [policy_action_throughput(args.task, args.num_envs, decisions=40)]
    base = ChunkPolicy.from_pretrained(ASSETS_DIR / "base" / f"{args.task}_flow")
    settings = {"num_envs": args.num_envs, "eval_every": 0, "video": False,
                "iterations": args.iterations + 1, **overrides}
    algo = make_finetune(args.algo, base, args.task, settings, tempfile.mkdtemp())
    algo.restart(0)
    algo.iterate(0)  # warm-up: first-call allocations
    seconds = {"sim": 0.0, "policy": 0.0, "update": 0.0}
    steps_before, start = algo.env_steps, time.perf_counter()
    for i in range(1, args.iterations + 1):
        metrics = algo.iterate(i)
        for key in seconds:
            seconds[key] += metrics[f"seconds_{key}"]
    wall = time.perf_counter() - start
    loop = (algo.env_steps - steps_before) / wall
    raw.append(raw_env_throughput(args.task, args.num_envs, seconds=4.0))
    replay.append(policy_action_throughput(args.task, args.num_envs, decisions=40))
    raw_mean, replay_mean = sum(raw) / 2, sum(replay) / 2
    shares = {f"share_{k}": round(v / wall, 3) for k, v in seconds.items()}
    print(f"{args.task} at {args.num_envs} envs, {args.algo}: loop {loop:.0f} env steps/s; "
          f"raw env {raw_mean:.0f} (before/after {raw[0]:.0f}/{raw[1]:.0f}); replaying the "
          f"policy's actions {replay_mean:.0f}; loop = {loop / raw_mean:.0%} of raw (target "
          f">= 50%), {loop / replay_mean:.0%} of the replay")
    print("shares of an iteration: " + ", ".join(f"{k[6:]} {v:.0%}" for k, v in shares.items()))
    print(json.dumps({
        "task": args.task, "num_envs": args.num_envs, "algorithm": args.algo,
        "overrides": overrides,
        "iterations": args.iterations, "loop_env_steps_per_s": round(loop),
        "raw_env_steps_per_s": round(raw_mean), "policy_action_steps_per_s": round(replay_mean),
        "loop_over_env_throughput": round(loop / raw_mean, 3),
        "loop_over_policy_action_throughput": round(loop / replay_mean, 3),
        "seconds_per_iteration": round(wall / args.iterations, 2), **shares}))


if __name__ == "__main__":
    main()
