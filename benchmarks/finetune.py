"""Fine-tuning benchmark: every algorithm from the same shipped base and seeds, on a
manipulation task and Hopper; success (and return) against env steps and wall-clock.

    python benchmarks/finetune.py [--tasks pick_place hopper] [--iterations 40]
                                  [--algos reinflow flow_sde dppo resip gaussian_ppo]

For each task x algorithm it runs `embodied.algos.make_finetune` (the code path of
`embodied finetune`), evaluates every --eval-every iterations (deterministic policy, the
same eval seeds for all), and prints a table, writes a PNG of the curves and the runs under
--out. `dppo` runs on the same flow base (its chain made stochastic with the Flow-SDE
sampler, last K' = 2 of K = 4 steps trained, per-step ratio): a like-for-like comparison of
the algorithms' update rules. `dppo_diffusion` is DPPO's own setting, on the shipped
diffusion base of the task (DDIM, K = 5, K' = 2) where there is one; it starts from another
base, so it is not used in the wall-clock ratio.

Figures:
  reinflow_over_dppo_wallclock  on the manipulation task, ReinFlow's wall-clock seconds to
                                first reach DPPO's final success / DPPO's seconds to first
                                reach it, counting evaluations after the start only (ReinFlow
                                paper: ~0.18); null if ReinFlow never reaches it
  loop_over_env_throughput      env steps/s of the whole fine-tuning loop (rollout, policy,
                                update; evaluation excluded) / raw env steps/s of the same
                                task at the same number of envs with random actions, measured
                                in this run (target >= 0.5)
  loop_over_policy_action_throughput  the same loop / env steps/s replaying the base
                                policy's own actions (grasping costs the simulator more)
  share_sim/policy/update       where a training iteration's time goes
The last line is JSON with these figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from embodied.algos import make_finetune
from embodied.core.paths import ASSETS_DIR
from embodied.core.runlog import read_metrics
from embodied.envs import make_env
from embodied.policies.policy import ChunkPolicy

# name: (algorithm, base checkpoint kind, settings over the algorithm's defaults)
RUNS = {
    "reinflow": ("reinflow", "flow", {}),
    "flow_sde": ("flow_sde", "flow", {}),
    "dppo": ("dppo", "flow", {"sampler": "sde", "sampler_kwargs": {"noise_level": 0.5},
                              "finetune_steps": 2}),
    "dppo_diffusion": ("dppo", "diffusion", {}),  # DPPO's own setting: DDIM K=5, K'=2
    "resip": ("resip", "flow", {}),
    "gaussian_ppo": ("gaussian_ppo", "flow", {}),
}


# Per-task settings on top of each algorithm's defaults: Hopper's dense reward (~3 per step)
# needs return normalisation, or the critic never catches up (explained variance ~0).
TASK_SETTINGS = {"hopper": {"normalize_rewards": True}}


def raw_env_throughput(task: str, num_envs: int, seconds: float) -> float:
    """Env steps/s with random actions and auto-reset: the loop's ceiling."""
    env = make_env(task, num_envs=num_envs)
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    actions = [torch.rand((num_envs, env.action_dim), generator=g) * 2 - 1 for _ in range(16)]
    for a in actions[:3]:
        env.step(a)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(actions[steps % len(actions)])
        steps += 1
    rate = steps * num_envs / (time.perf_counter() - start)
    env.close()
    return rate


def policy_action_throughput(task: str, num_envs: int, decisions: int = 75) -> float:
    """Env steps/s replaying the base policy's own actions (policy time excluded): contact-
    rich manipulation (grasping) simulates slower than the random actions above."""
    policy = ChunkPolicy.from_pretrained(ASSETS_DIR / "base" / f"{task}_flow")
    env = make_env(task, num_envs=num_envs)
    obs, actions = env.reset(seed=0), []
    g = torch.Generator().manual_seed(0)
    for _ in range(decisions):
        chunk = policy.act(obs["state"], generator=g)
        for j in range(chunk.shape[1]):
            actions.append(chunk[:, j].clone())
            obs = env.step(chunk[:, j])[0]
    env.reset(seed=0)
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    rate = len(actions) * num_envs / (time.perf_counter() - start)
    env.close()
    return rate


def run_one(task: str, name: str, args, out: Path) -> dict | None:
    algo, kind, extra = RUNS[name]
    base_dir = ASSETS_DIR / "base" / f"{task}_{kind}"
    if not base_dir.exists():
        print(f"skip {task}/{name}: no shipped {kind} base (scripts/make_base_checkpoints.py)")
        return None
    base = ChunkPolicy.from_pretrained(base_dir)
    settings = {"iterations": args.iterations, "num_envs": args.num_envs,
                "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
                "checkpoint_every": args.eval_every, "video": False, "seed": args.seed,
                **TASK_SETTINGS.get(task, {}), **extra}
    run_dir = out / f"{task}_{name}"
    ppo = make_finetune(algo, base, task, settings, run_dir)
    summary = ppo.train(progress=False)
    start = None
    curve = []
    for row in read_metrics(run_dir):
        start = row["time"] if start is None else start
        if "success_rate" in row:
            curve.append({"env_steps": row["step"], "seconds": round(row["time"] - start, 1),
                          "success": row["success_rate"], "return": row["return_mean"]})
    loop = summary["seconds_sim"] + summary["seconds_policy"] + summary["seconds_update"]
    return {"task": task, "algo": name, "curve": curve,
            "success_before": summary["success_before"],
            "success_after": summary["success_after"], "env_steps": summary["env_steps"],
            "loop_env_steps_per_s": summary["env_steps"] / loop,
            "share": {k: summary[f"seconds_{k}"] / loop for k in ("sim", "policy", "update")},
            "seconds": summary["seconds"]}


def seconds_to_reach(curve: list[dict], target: float) -> float | None:
    """Wall-clock of the first evaluation after the start with success >= target."""
    return next((p["seconds"] for p in curve[1:] if p["success"] >= target), None)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in results})
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.5 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        for r in (r for r in results if r["task"] == task):
            for col, x in enumerate(("env_steps", "seconds")):
                axes[row][col].plot([p[x] for p in r["curve"]],
                                    [p["success"] for p in r["curve"]], marker="o",
                                    label=r["algo"])
        for col, x in enumerate(("env steps", "wall-clock seconds")):
            axes[row][col].set(title=task, xlabel=x, ylabel="success rate")
            axes[row][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["pick_place", "hopper"])
    parser.add_argument("--algos", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-episodes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--torch-threads", type=int, default=2, help="as embodied finetune")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="embodied_finetune_bench_"))
    results = [r for task in args.tasks for name in args.algos
               if (r := run_one(task, name, args, out)) is not None]
    if not results:
        raise SystemExit("nothing ran: no shipped base for these tasks and algorithms")

    print(f"\n{args.iterations} iterations x {args.num_envs} envs, eval every "
          f"{args.eval_every} on {args.eval_episodes} episodes (seed 10000); runs in {out}")
    print(f"{'task':<11}{'algo':<14}{'before':>7}{'after':>7}{'env steps':>11}"
          f"{'seconds':>9}{'steps/s':>9}{'sim':>6}{'policy':>7}{'update':>7}")
    for r in results:
        s = r["share"]
        print(f"{r['task']:<11}{r['algo']:<14}{r['success_before'] or 0:>7.2f}"
              f"{r['success_after']:>7.2f}{r['env_steps']:>11}{r['seconds']:>9.0f}"
              f"{r['loop_env_steps_per_s']:>9.0f}{s['sim']:>6.0%}{s['policy']:>7.0%}"
              f"{s['update']:>7.0%}")
    for r in results:
        print(f"curve {r['task']} {r['algo']}: " + ", ".join(
            f"{p['env_steps']}:{p['success']:.2f}/{p['return']:.0f}@{p['seconds']:.0f}s"
            for p in r["curve"]))
    png = out / "finetune_curves.png"
    plot(results, png)
    print(f"curves: {png}")

    manip = args.tasks[0]
    by = {(r["task"], r["algo"]): r for r in results}
    ratio = None
    if (manip, "reinflow") in by and (manip, "dppo") in by:
        dppo = by[(manip, "dppo")]
        target = dppo["success_after"]
        t_dppo = seconds_to_reach(dppo["curve"], target)
        t_reinflow = seconds_to_reach(by[(manip, "reinflow")]["curve"], target)
        if t_dppo and t_reinflow is not None:
            ratio = round(t_reinflow / t_dppo, 3)
    first = by.get((manip, "reinflow")) or results[0]
    raw = raw_env_throughput(first["task"], args.num_envs, seconds=5.0)
    replay = policy_action_throughput(first["task"], args.num_envs)
    loop_ratio = round(first["loop_env_steps_per_s"] / raw, 3)
    replay_ratio = round(first["loop_env_steps_per_s"] / replay, 3)
    print(f"{first['task']} at {args.num_envs} envs: raw env throughput {raw:.0f} steps/s "
          f"(random actions), {replay:.0f} steps/s (the base policy's actions replayed); "
          f"{first['algo']} loop: {first['loop_env_steps_per_s']:.0f} steps/s = "
          f"{loop_ratio:.0%} of raw (target >= 50%), {replay_ratio:.0%} of the replay")
    print(json.dumps({
        "reinflow_over_dppo_wallclock": ratio,
        "loop_over_env_throughput": loop_ratio,
        "loop_over_policy_action_throughput": replay_ratio,
        "share_sim": round(first["share"]["sim"], 3),
        "share_policy": round(first["share"]["policy"], 3),
        "share_update": round(first["share"]["update"], 3),
        "final_success": {f"{r['task']}/{r['algo']}": r["success_after"] for r in results},
    }))


if __name__ == "__main__":
    main()
