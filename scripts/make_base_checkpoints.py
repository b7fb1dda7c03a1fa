"""Make the shipped base checkpoints: BC flow policies that succeed sometimes, not always.

    python scripts/make_base_checkpoints.py [--tasks push_cube pick_place peg_insert hopper]
                                            [--kinds flow diffusion image]

For each task: collect a deliberately small, noisy demonstration set with the task's expert,
behaviour-clone a flow-matching MLP policy (K=4 Euler steps, Tp=8, Ta=4) on it, evaluate it
with the fixed protocol below, and write the policy to assets/base/<task>_<kind>/
plus a row of assets/base/README.md (rebuilt from every base.json there, so a run of one
kind leaves the other bases as they are). The recipe per task is in RECIPES; the aim is
a base success of roughly 20-70%, leaving room for RL fine-tuning.

`--kinds image` makes the pixel bases of IMAGE_RECIPES (`--tasks` defaults to the tasks
of the kinds asked for): the same flow policy conditioned on one 64x64 camera (the
policies' small ResNet with random-shift augmentation) plus the state, with a two-frame
observation history (To=2); demonstrations are recorded with that camera. Rendering and the
ResNet make it the slow kind on a CPU: about 10 minutes for pick_place_image on one thread
(collect ~10 s, BC ~8 min at 0.6 s/step, evaluation ~2 min; each stage's seconds are in
base.json).

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
IMAGE_RECIPES = {
    # task: demos, expert noise, BC steps and batch size, cameras and their image size
    # (push_cube with this recipe stayed at 10-25% between 400 and 800 steps: too weak.)
    "pick_place": {"episodes": 20, "noise": 0.5, "steps": 800, "batch_size": 32,
                   "cameras": ["front"], "image_size": 64},
}
EVAL = {"episodes": 100, "seed": 0}


KINDS = {
    # name suffix: policy config fields (the same MLP denoiser, Tp=8, Ta=4)
    "flow": {"kind": "flow", "num_steps": 4},
    # DPPO's setting: an eps-prediction DDPM (100 train steps) sampled with 5 DDIM steps.
    "diffusion": {"kind": "diffusion", "num_train_steps": 100, "sampler": "ddim",
                  "num_steps": 5},
    # Pixels: the flow policy on camera frames + state (cameras from IMAGE_RECIPES), To=2.
    "image": {"kind": "flow", "num_steps": 4, "n_obs_steps": 2},
}


def recipes(kind: str) -> dict[str, dict]:
    return IMAGE_RECIPES if kind == "image" else RECIPES


def make_base(task: str, out_root: Path, work: Path, kind: str = "flow") -> dict:
    recipe = recipes(kind)[task]
    cameras = list(recipe.get("cameras", []))
    image_size = recipe.get("image_size", 96)
    start = time.time()
    stages = {}
    data_root = work / f"{task}_demos"
    demos = collect(task, recipe["episodes"], data_root, num_envs=recipe["episodes"],
                    noise=recipe["noise"], seed=0, cameras=tuple(cameras),
                    image_size=image_size, progress=False)
    stages["collect"] = round(time.time() - start, 1)
    dataset = EpisodeDataset(data_root)
    torch.manual_seed(0)
    config = PolicyConfig(net="mlp", obs_dim=dataset.features["observation.state"].shape[0],
                          action_dim=dataset.features["action"].shape[0], horizon=8,
                          n_action_steps=4, cameras=cameras, image_size=image_size,
                          **KINDS[kind])
    policy = ChunkPolicy(config)
    policy.fit_normalizers(dataset.stats)
    windows = ChunkWindows(dataset, config.n_obs_steps, config.horizon, cameras=tuple(cameras))
    bc = BCConfig(steps=recipe["steps"], batch_size=recipe.get("batch_size", 256),
                  eval_every=0, video=False, checkpoint_every=10**9)
    trainer = BCTrainer(policy, windows, bc, work / f"{task}_run")
    mark = time.time()
    trainer.train(progress=False)
    stages["pretrain"] = round(time.time() - mark, 1)
    mark = time.time()
    result = evaluate(trainer.ema, task, EVAL["episodes"], seed=EVAL["seed"])
    stages["evaluate"] = round(time.time() - mark, 1)
    out = trainer.ema.save_pretrained(out_root / f"{task}_{kind}")
    row = {"task": task, "checkpoint": f"assets/base/{task}_{kind}", "kind": kind,
           "demos": demos["episodes"], "demo_noise": recipe["noise"],
           "demo_success": round(demos["success_rate"], 3), "bc_steps": recipe["steps"],
           "success_rate": result["success_rate"], "return_mean": round(result["return_mean"], 2),
           "eval_episodes": result["episodes"], "eval_seed": EVAL["seed"],
           "seconds": round(time.time() - start, 1)}
    if cameras:
        row.update({"policy_kind": config.kind, "cameras": cameras, "image_size": image_size,
                    "n_obs_steps": config.n_obs_steps, "bc_batch_size": bc.batch_size,
                    "stage_seconds": stages})
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
        "`<task>_image` is the base for fine-tuning from pixels: the same flow policy",
        "conditioned on one camera (a small ResNet with random-shift augmentation) plus the",
        "state, with a two-frame observation history (To=2); its demonstrations were",
        "recorded with that camera, and evaluating it renders the camera at every step.",
        "",
        "| task | policy | demos (expert noise, expert success) | BC steps | base success "
        "| mean return |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        batch = f" (batch {r['bc_batch_size']})" if "bc_batch_size" in r else ""
        lines.append(f"| {r['task']} | {policy_label(r)} | {r['demos']} "
                     f"({r['demo_noise']}, "
                     f"{r['demo_success']:.0%}) | {r['bc_steps']}{batch} | "
                     f"{r['success_rate']:.0%} | {r['return_mean']:.1f} |")
    atomic_write_text(out_root / "README.md", "\n".join(lines) + "\n")


def policy_label(row: dict) -> str:
    kind = row.get("kind", "flow")
    if not row.get("cameras"):
        return kind
    size = row["image_size"]
    cams = " + ".join(f"{c} {size}x{size}" for c in row["cameras"])
    return f"{kind}: {row['policy_kind']} on {cams} camera + state, To={row['n_obs_steps']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="default: every task with a recipe for the kinds asked for")
    parser.add_argument("--kinds", nargs="+", default=["flow"], choices=list(KINDS))
    parser.add_argument("--out", default=str(ASSETS_DIR / "base"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_root = Path(args.out)
    tasks = args.tasks or list(dict.fromkeys(t for k in args.kinds for t in recipes(k)))
    jobs = [(t, k) for t in tasks for k in args.kinds if args.tasks or t in recipes(k)]
    missing = [f"{t}_{k}" for t, k in jobs if t not in recipes(k)]
    if missing:
        parser.error(f"no recipe for {missing}; {args.kinds} have recipes for "
                     f"{ {k: sorted(recipes(k)) for k in args.kinds} }")
    with tempfile.TemporaryDirectory() as work:
        for task, kind in jobs:
            make_base(task, out_root, Path(work) / kind, kind)
    write_table(out_root)


if __name__ == "__main__":
    main()
