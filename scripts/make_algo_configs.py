"""Regenerate configs/algo/*.yaml from the algorithms' config dataclasses.

Run after changing a config dataclass: `python scripts/make_algo_configs.py`; a test fails
while a YAML and its dataclass disagree on the set of fields.
"""
import dataclasses

import yaml

from embodied.algos import FINETUNE_ALGORITHMS, finetune_algorithm

docs = {
 "reinflow": "ReinFlow: Euler chain made stochastic by a learned, tanh-bounded noise head.",
 "flow_noise": "pi_RL Flow-Noise: learned noise on every step, joint chain log-likelihood.",
 "flow_sde": "pi_RL Flow-SDE: ODE-to-SDE conversion (sampler sde, or sde_hybrid: one SDE step).",
 "dppo": "DPPO: last K' denoising steps fine-tuned, one PPO term per step, frozen early steps.",
 "resip": "ResiP: per-step Gaussian residual on a frozen base (one env step per decision).",
 "gaussian_ppo": "Plain PPO with a Gaussian MLP from scratch (base is ignored): the baseline.",
 "sac": "SAC from scratch: tanh-Gaussian actor, REDQ ensemble critics, learned temperature.",
 "dsrl": "DSRL: SAC over the initial noise of a frozen flow/diffusion base (critic Q(s, x_0)).",
 "td3": "TD3 from scratch: deterministic tanh actor, target smoothing, delayed actor updates.",
}
def write(name, algorithm, overrides, doc):
    _, cls = finetune_algorithm(algorithm)
    cfg = dataclasses.asdict(cls())
    cfg.update(overrides)
    body = yaml.safe_dump({"algorithm": algorithm, **cfg}, sort_keys=False)
    head = (f"# {doc}\n# Generated from embodied.algos.{algorithm}.{cls.__name__}: every field, "
            "so any can be overridden as algo.<field>=...\n")
    open(f"configs/algo/{name}.yaml", "w").write(head + body)
for name in FINETUNE_ALGORITHMS:
    write(name, name, {}, docs[name])
write("flow_sde_hybrid", "flow_sde", {"sampler": "sde_hybrid"},
      "pi_RL Flow-SDE, hybrid variant: one SDE step per chain, only it enters the ratio.")
write("grpo_reinflow", "reinflow", {"advantage": "grpo"},
      "ReinFlow's chain with GRPO-style group-relative advantages (no critic in the advantage).")
