"""Reference outputs of every policy type, stored in tests/reference/policies.safetensors.

A change that alters what a given seed produces (initialisation, nets, samplers,
normalisation) fails here. If the change is intended, regenerate the file and commit it:

    EMBODIED_UPDATE_REFERENCE=1 pytest tests/test_reference.py
"""

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy

REFERENCE = Path(__file__).parent / "reference" / "policies.safetensors"
KINDS = {
    "flow_mlp": {"kind": "flow", "net": "mlp"},
    "flow_unet": {"kind": "flow", "net": "unet"},
    "flow_transformer": {"kind": "flow", "net": "transformer"},
    "shortcut_mlp": {"kind": "shortcut", "net": "mlp", "num_steps": 2},
    "diffusion_unet": {"kind": "diffusion", "net": "unet", "num_train_steps": 10},
    "gaussian_mlp": {"kind": "gaussian"},
}


def outputs() -> dict[str, torch.Tensor]:
    result = {}
    for name, fields in KINDS.items():
        torch.manual_seed(0)
        policy = ChunkPolicy(PolicyConfig(obs_dim=5, action_dim=3, horizon=8, n_action_steps=4,
                                          **fields))
        obs = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
        actions = torch.rand(4, 8, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
        loss = policy.bc_loss(obs, actions, generator=torch.Generator().manual_seed(3))
        loss.backward()
        grad_norm = torch.stack([p.grad.norm() for p in policy.parameters()
                                 if p.grad is not None]).norm()
        policy.eval()
        result[f"{name}.act"] = policy.act(obs, generator=torch.Generator().manual_seed(4))
        result[f"{name}.loss"] = loss.detach().reshape(1)
        result[f"{name}.grad_norm"] = grad_norm.reshape(1)
        result[f"{name}.param_sum"] = torch.stack(
            [p.detach().double().sum() for p in policy.parameters()]).sum().reshape(1)
    return result


def test_policies_match_reference_outputs():
    current = outputs()
    if os.environ.get("EMBODIED_UPDATE_REFERENCE"):
        REFERENCE.parent.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in current.items()}, str(REFERENCE))
    assert REFERENCE.exists(), f"{REFERENCE} is missing: see this file's docstring"
    stored = load_file(str(REFERENCE))
    assert sorted(stored) == sorted(current)
    for key, value in current.items():
        torch.testing.assert_close(value, stored[key], rtol=1e-5, atol=1e-6, msg=key)
