"""Time to produce one action chunk on CPU, per policy type, at batch 1 and batch 256.

    python benchmarks/policy_latency.py [--seconds 2]

Policies (push_cube dims: obs 26, action 4, Tp 8): flow MLP with K = 1, 4, 10 Euler steps,
shortcut MLP with K = 1, and a diffusion U-Net (Tp 16) with DDPM-100. Figures are chunks per
second on one thread (torch.set_num_threads(1)), and ratios against DDPM-100 measured in the
same run. Target: flow MLP K=4 serves >= 200 chunks/s at batch 1 on one core.
The last line is JSON with at least `flow_k4_b1` and `ddpm100_b1` (chunks per second).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy

OBS_DIM, ACTION_DIM = 26, 4


def make(kind: str, net: str, num_steps: int, horizon: int = 8, **kw) -> ChunkPolicy:
    config = PolicyConfig(kind=kind, net=net, obs_dim=OBS_DIM, action_dim=ACTION_DIM,
                          horizon=horizon, n_action_steps=min(4, horizon), num_steps=num_steps,
                          **kw)
    return ChunkPolicy(config).eval()


def chunks_per_second(policy: ChunkPolicy, batch: int, seconds: float) -> float:
    obs = torch.randn(batch, OBS_DIM)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _ in range(3):
            policy.act(obs, generator=generator)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            policy.act(obs, generator=generator)
            calls += 1
    return calls * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policies = {
        "flow_k1": make("flow", "mlp", 1),
        "flow_k4": make("flow", "mlp", 4),
        "flow_k10": make("flow", "mlp", 10),
        "shortcut_k1": make("shortcut", "mlp", 1),
        "ddpm100": make("diffusion", "unet", 100, horizon=16, num_train_steps=100),
    }
    result: dict[str, float] = {}
    for batch in (1, 256):
        for name, policy in policies.items():
            result[f"{name}_b{batch}"] = chunks_per_second(policy, batch, args.seconds)
    print(f"{'policy':14s} {'batch 1 (chunks/s)':>20s} {'x DDPM-100':>10s} "
          f"{'batch 256 (chunks/s)':>22s} {'x DDPM-100':>10s}")
    for name in policies:
        b1, b256 = result[f"{name}_b1"], result[f"{name}_b256"]
        print(f"{name:14s} {b1:>20,.1f} {b1 / result['ddpm100_b1']:>10.1f} "
              f"{b256:>22,.1f} {b256 / result['ddpm100_b256']:>10.1f}")
    target = result["flow_k4_b1"] >= 200
    print(f"target flow K=4 batch 1 >= 200 chunks/s on one core: "
          f"{'met' if target else 'NOT met'} ({result['flow_k4_b1']:.0f})")
    print(json.dumps({k: round(v, 1) for k, v in result.items()}))


if __name__ == "__main__":
    main()
