"""Train the shipped Hopper expert: Stable-Baselines3 SAC on our batched Hopper task.

    python scripts/train_hopper_expert.py --steps 200000 --out assets/experts/hopper_sac

Writes `<out>.safetensors` (the deterministic actor: two ReLU layers and the mean head,
~300 KB; `embodied.data.experts.MLPExpert` runs it in plain torch, no SB3 needed) and
`<out>.json` (how it was made and its evaluation). Takes 30-45 minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def evaluate(model, episodes: int = 20, seed: int = 1000) -> dict:
    from embodied.envs import make_env

    env = make_env("hopper", num_envs=episodes)
    obs = env.reset(seed=seed)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=int)
    finished = np.zeros(episodes, dtype=bool)
    while not finished.all():
        action, _ = model.predict(obs["state"].numpy(), deterministic=True)
        obs, _, terminated, truncated, info = env.step(torch.as_tensor(action))
        done = (terminated | truncated).numpy() & ~finished
        returns[done] = info["episode_return"].numpy()[done] if done.any() else 0
        lengths[done] = info["episode_length"].numpy()[done] if done.any() else 0
        finished |= done
    return {"episodes": episodes, "seed": seed, "return_mean": float(returns.mean()),
            "return_std": float(returns.std()), "length_mean": float(lengths.mean())}


def export_actor(model, path: Path) -> None:
    """SB3 SAC actor -> safetensors: layers.{i}.weight/bias (ReLU between), then tanh."""
    from safetensors.torch import save_file

    from embodied.core.io import atomic_write

    linears = [m for m in model.actor.latent_pi if isinstance(m, torch.nn.Linear)]
    linears.append(model.actor.mu)
    tensors = {}
    for i, layer in enumerate(linears):
        tensors[f"layers.{i}.weight"] = layer.weight.detach().cpu().contiguous()
        tensors[f"layers.{i}.bias"] = layer.bias.detach().cpu().contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp),
                                             metadata={"activation": "relu", "output": "tanh"}))


def main() -> None:
    from stable_baselines3 import SAC

    from embodied.envs import make_env
    from embodied.envs.adapters import SB3VecEnv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="assets/experts/hopper_sac")
    args = parser.parse_args()
    torch.set_num_threads(1)
    venv = SB3VecEnv(make_env("hopper", num_envs=1, nthread=1))
    venv.seed(args.seed)
    model = SAC("MlpPolicy", venv, learning_starts=10_000, seed=args.seed, device="cpu",
                policy_kwargs={"net_arch": [256, 256]}, verbose=0)
    start = time.time()
    chunk = 20_000
    for done in range(0, args.steps, chunk):
        model.learn(min(chunk, args.steps - done), reset_num_timesteps=False)
        stats = evaluate(model, episodes=10)
        print(f"{model.num_timesteps:>8d} steps  {time.time() - start:6.0f}s  "
              f"return {stats['return_mean']:.0f} +- {stats['return_std']:.0f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_actor(model, Path(str(out) + ".safetensors"))
    report = {"algorithm": "SB3 SAC", "task": "hopper", "steps": args.steps, "seed": args.seed,
              "train_seconds": round(time.time() - start), "eval": evaluate(model)}
    Path(str(out) + ".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
