"""Denoisers, heads and observation encoders: shapes, the step-size contract, gradients,
initialisation, augmentation and a tiny overfitting check. Small nets: runs in seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from embodied.core.errors import ConfigError
from embodied.policies.encoders import MultiModalEncoder, ResNetImageEncoder, StateEncoder
from embodied.policies.nets import (
    GaussianMLP,
    MLPDenoiser,
    NoiseHead,
    SinusoidalEmbedding,
    TransformerDenoiser,
    UNet1D,
    ValueMLP,
    build_denoiser,
)

DA, C = 3, 6
SMALL = {
    "mlp": {"hidden": 32, "depth": 2, "time_dim": 16},
    "unet": {"down_dims": (16, 32, 64), "n_groups": 4, "time_dim": 16},
    "transformer": {"d_model": 32, "nhead": 2, "num_layers": 1, "time_dim": 16},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny nets gain nothing from intra-op threads, and on a busy 2-core CI box OpenMP
    threads waiting for each other make them 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make(name: str, horizon: int, step: bool) -> torch.nn.Module:
    return build_denoiser(name, horizon=horizon, action_dim=DA, cond_dim=C,
                          step_embedding=step, **SMALL[name])


def inputs(batch: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(batch, horizon, DA), torch.rand(batch), torch.randn(batch, C)


@pytest.mark.parametrize("step", [False, True])
@pytest.mark.parametrize("horizon", [4, 8, 16])
@pytest.mark.parametrize("name", ["mlp", "unet", "transformer"])
def test_denoiser_shapes_and_step_contract(name: str, horizon: int, step: bool) -> None:
    net = make(name, horizon, step)
    x, t, cond = inputs(2, horizon)
    d = torch.full((2,), 0.25)
    out = net(x, t, cond, d if step else None)
    assert out.shape == (2, horizon, DA) and torch.isfinite(out).all()
    # d must be given iff the net was built with a step embedding.
    with pytest.raises(ValueError, match="step_embedding"):
        net(x, t, cond, None if step else d)
    # Batch 1 and a scalar time work too.
    assert net(x[:1], torch.tensor(0.5), cond[:1], d[:1] if step else None).shape == x[:1].shape


@pytest.mark.parametrize("horizon", [3, 5])
def test_unet_odd_horizons(horizon: int) -> None:
    x, t, cond = inputs(2, horizon)
    assert make("unet", horizon, False)(x, t, cond).shape == x.shape


def test_default_constructors() -> None:
    x, t, cond = inputs(2, 16)
    for net in (MLPDenoiser(16, DA, C), UNet1D(16, DA, C), TransformerDenoiser(16, DA, C)):
        assert net(x, t, cond).shape == x.shape


@pytest.mark.parametrize("name", ["mlp", "unet", "transformer"])
def test_gradients_reach_every_parameter(name: str) -> None:
    net = make(name, 4, True)
    x, t, cond = inputs(4, 4)
    loss = (net(x, t, cond, torch.rand(4)) - torch.randn(4, 4, DA)).pow(2).mean()
    loss.backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_time_changes_the_output() -> None:
    net = make("mlp", 4, False)
    x, _, cond = inputs(2, 4)
    assert not torch.allclose(net(x, torch.zeros(2), cond), net(x, torch.ones(2), cond))
    emb = SinusoidalEmbedding(16, scale=1.0)  # diffusion timesteps: distinct, bounded
    e = emb(torch.tensor([0.0, 1.0, 999.0]))
    assert e.shape == (3, 16) and e.abs().max() <= 1 and not torch.allclose(e[1], e[2])


def test_build_denoiser_bad_name() -> None:
    with pytest.raises(ConfigError, match="mlp.*transformer.*unet"):
        build_denoiser("resnet", horizon=4, action_dim=DA, cond_dim=C)


def test_noise_head_starts_near_zero_and_trains() -> None:
    head = NoiseHead(8, DA, C, hidden=32, time_dim=16)
    x, t, cond = inputs(5, 8)
    raw = head(x, t, cond)
    assert raw.shape == x.shape and raw.abs().max() < 0.05
    raw.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert NoiseHead(8, DA, C, hidden=32, use_x=True)(x, t, cond).shape == x.shape


@pytest.mark.parametrize("state_dependent", [False, True])
def test_gaussian_mlp(state_dependent: bool) -> None:
    pi = GaussianMLP(7, 4, hidden=(16, 16), log_std_init=-1.0, zero_init_last=True,
                     state_dependent_std=state_dependent)
    mean, log_std = pi(torch.randn(3, 7))
    assert mean.shape == log_std.shape == (3, 4)
    assert torch.equal(mean, torch.zeros(3, 4))
    assert torch.allclose(log_std, torch.full((3, 4), -1.0))
    mean2, _ = GaussianMLP(7, 4, hidden=(16,))(torch.randn(3, 7))
    assert mean2.abs().sum() > 0


def test_value_mlp() -> None:
    v = ValueMLP(7, hidden=(16, 16), layer_norm=True)
    assert v(torch.randn(5, 7)).shape == (5,)


def test_tiny_overfit() -> None:
    """MLP and U-Net fit a fixed random target (loss / 10 within 100 Adam steps)."""
    for net in (MLPDenoiser(8, DA, C, hidden=64, depth=2, time_dim=16),
                UNet1D(8, DA, C, down_dims=(16, 32), n_groups=4, time_dim=16)):
        x, t, cond = inputs(16, 8)
        target = torch.randn(16, 8, DA)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        losses = []
        for _ in range(100):
            loss = (net(x, t, cond) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] / 10, (type(net).__name__, losses[0], losses[-1])


# --- encoders ----------------------------------------------------------------------------
def test_state_encoder() -> None:
    flat = StateEncoder(5, 2)
    s = torch.randn(3, 2, 5)
    assert flat.out_dim == 10 and torch.equal(flat(s), s.flatten(1))
    enc = StateEncoder(5, 2, hidden=16, out_dim=8)
    assert enc.out_dim == 8 and enc(s).shape == (3, 8) and enc(s[:1]).shape == (1, 8)
    assert StateEncoder(5)(torch.randn(3, 5)).shape == (3, 5)
    with pytest.raises(ValueError, match="To=2"):
        flat(torch.randn(3, 3, 5))


def small_image_encoder(**kwargs: object) -> ResNetImageEncoder:
    return ResNetImageEncoder(16, out_dim=8, channels=(8, 16), num_keypoints=4, n_groups=4,
                              **kwargs)


@pytest.mark.parametrize("pool", ["spatial_softmax", "avg"])
def test_image_encoder_shift_and_inputs(pool: str) -> None:
    enc = small_image_encoder(random_shift=2, pool=pool)
    img = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    enc.train()
    assert enc(img).shape == (3, 8)
    assert not torch.allclose(enc(img), enc(img))  # a fresh random shift each call
    enc.eval()
    a = enc(img)
    assert torch.equal(a, enc(img))  # deterministic in eval mode
    as_float = img.permute(0, 3, 1, 2).float() / 255.0
    assert torch.allclose(a, enc(as_float), atol=1e-6)  # uint8 HWC == float CHW
    assert enc(img[:1]).shape == (1, 8)  # GroupNorm: batch 1 is fine
    enc.train()
    assert enc(img[:1]).shape == (1, 8)
    with pytest.raises(ValueError, match="image_size"):
        enc(torch.zeros(1, 12, 12, 3, dtype=torch.uint8))


def test_image_encoder_gradients() -> None:
    enc = small_image_encoder()
    enc(torch.rand(2, 3, 16, 16)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize("shared", [False, True])
def test_multimodal_encoder(shared: bool) -> None:
    kw = {"channels": (8, 16), "num_keypoints": 4, "n_groups": 4}
    enc = MultiModalEncoder(5, 2, ["front", "wrist"], 16, image_out_dim=8,
                            share_image_encoder=shared, image_kwargs=kw)
    assert enc.out_dim == 10 + 2 * 2 * 8
    obs = {"state": torch.randn(1, 2, 5),
           "rgb_front": torch.randint(0, 256, (1, 2, 16, 16, 3), dtype=torch.uint8),
           "rgb_wrist": torch.randint(0, 256, (1, 2, 16, 16, 3), dtype=torch.uint8)}
    out = enc.eval()(obs)
    assert out.shape == (1, enc.out_dim)
    assert torch.equal(out[:, :10], obs["state"].flatten(1))
    n_image_params = sum(p.numel() for p in small_image_encoder().parameters())
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params == (1 if shared else 2) * n_image_params
    # Every tensor is stored once (safetensors refuses shared storage).
    ptrs = [v.data_ptr() for v in enc.state_dict().values()]
    assert len(ptrs) == len(set(ptrs))
    with pytest.raises(KeyError, match="rgb_wrist"):
        enc({"state": obs["state"], "rgb_front": obs["rgb_front"]})
