"""Make the shipped base checkpoints: BC flow policies that succeed sometimes, not always.

    python scripts/make_base_checkpoints.py [--tasks push_cube pick_place peg_insert hopper]
                                            [--kinds flow diffusion]

For each task: collect a deliberately small, noisy demonstration set with the task's expert,
behaviour-clone a flow-matching MLP policy (K=4 Euler steps, Tp=8, Ta=4) on it, evaluate it
with the fixed protocol below, and write the policy to assets/base/<task>_flow/
plus a row of assets/base/README.md. The recipe per task is in RECIPES; the aim is
a base success of roughly 20-70%, leaving room for RL fine-tuning.

Evaluation protocol (the same as `embodied eval task=<task> checkpoint=<dir>
episodes=100 seed=0`): 100 episodes, the first episode of each of 100 envs in 2 batches of
at most 64, env seeds 0 and 1, policy noise from torch.Generator(0), noise-free denoising.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from embodied.algos.bc import BCConfig, BCTrainer
from embodied.core.io import atomic_write_json, atomic_write_text
from embodied.core.paths import ASSETS_DIR
from embodied.data.collect import collect
from embodied.data.dataset import EpisodeDataset
from embodied.data.windows import ChunkWindows
from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy
from embodied.rollout import evaluate

RECIPES = {
    # task: demos, expert noise, BC steps
    "push_cube": {"episodes": 20, "noise": 0.5, "steps": 1500},
    "pick_place": {"episodes": 20, "noise": 0.5, "steps": 1500},
    "peg_insert": {"episodes": 20, "noise": 0.3, "steps": 1500},
    "hopper": {"episodes": 10, "noise": 0.3, "steps": 1500},
}
EVAL = {"episodes": 100, "seed": 0}


KINDS = {
    # name suffix: policy config fields (the same MLP denoiser, Tp=8, Ta=4)
    "flow": {"kind": "flow", "num_steps": 4},
    # DPPO's setting: an eps-prediction DDPM (100 train steps) sampled with 5 DDIM steps.
    "diffusion": {"kind": "diffusion", "num_train_steps": 100, "sampler": "ddim",
                  "num_steps": 5},
}


def make_base(task: str, out_root: Path, work: Path, kind: str = "flow") -> dict:
    recipe = RECIPES[task]
    start = time.time()
    data_root = work / f"{task}_demos"
    demos = collect(task, recipe["episodes"], data_root, num_envs=recipe["episodes"],
                    noise=recipe["noise"], seed=0, progress=False)
    dataset = EpisodeDataset(data_root)
    torch.manual_seed(0)
    config = PolicyConfig(net="mlp", obs_dim=dataset.features["observation.state"].shape[0],
                          action_dim=dataset.features["action"].shape[0], horizon=8,
                          n_action_steps=4, **KINDS[kind])
    policy = ChunkPolicy(config)
    policy.fit_normalizers(dataset.stats)
    windows = ChunkWindows(dataset, config.n_obs_steps, config.horizon)
    bc = BCConfig(steps=recipe["steps"], eval_every=0, video=False, checkpoint_every=10**9)
    trainer = BCTrainer(policy, windows, bc, work / f"{task}_run")
    trainer.train(progress=False)
    result = evaluate(trainer.ema, task, EVAL["episodes"], seed=EVAL["seed"])
    out = trainer.ema.save_pretrained(out_root / f"{task}_{kind}")
    row = {"task": task, "checkpoint": f"assets/base/{task}_{kind}", "kind": kind,
           "demos": demos["episodes"], "demo_noise": recipe["noise"],
           "demo_success": round(demos["success_rate"], 3), "bc_steps": recipe["steps"],
           "success_rate": result["success_rate"], "return_mean": round(result["return_mean"], 2),
           "eval_episodes": result["episodes"], "eval_seed": EVAL["seed"],
           "seconds": round(time.time() - start, 1)}
    atomic_write_json(out / "base.json", row)
    print(json.dumps(row), flush=True)
    return row


def write_table(out_root: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(out_root.glob("*/base.json"))]
    lines = [
        "# Base checkpoints",
        "",
        "MLP policies (Tp=8, Ta=4) behaviour-cloned on small noisy demonstration sets by",
        "`scripts/make_base_checkpoints.py`, so that they succeed sometimes but not always:",
        "`<task>_flow` (flow matching, K=4 Euler steps) and `<task>_diffusion` (DDPM with",
        "100 train steps, sampled with K=5 DDIM steps; DPPO's setting). Reproduce a row with",
        "`embodied eval task=<task> checkpoint=assets/base/<task>_<kind> "
        "episodes=100 seed=0`",
        "(100 episodes: the first episode of each env, env seeds 0 and 1 for the two batches of",
        "at most 64 envs, policy noise from seed 0, noise-free denoising).",
        "",
        "| task | policy | demos (expert noise, expert success) | BC steps | base success "
        "| mean return |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['task']} | {r.get('kind', 'flow')} | {r['demos']} "
                     f"({r['demo_noise']}, "
                     f"{r['demo_success']:.0%}) | {r['bc_steps']} | {r['success_rate']:.0%} | "
                     f"{r['return_mean']:.1f} |")
    atomic_write_text(out_root / "README.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(RECIPES))
    parser.add_argument("--kinds", nargs="+", default=["flow"], choices=list(KINDS))
    parser.add_argument("--out", default=str(ASSETS_DIR / "base"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_root = Path(args.out)
    with tempfile.TemporaryDirectory() as work:
        for task in args.tasks:
            for kind in args.kinds:
                make_base(task, out_root, Path(work) / kind, kind)
    write_table(out_root)


if __name__ == "__main__":
    main()
