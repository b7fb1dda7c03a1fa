"""Samplers: exact log-prob recomputation, marginals of Flow-SDE, parity with diffusers."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch.distributions import Normal

from embodied.policies.samplers import (
    Chain,
    DiffusionSampler,
    FlowSampler,
    TimeGrid,
    flow_training_pair,
    gaussian_log_prob,
)

B, TP, DA, C = 5, 3, 2, 4
SHAPE = (B, TP, DA)
KS = [1, 2, 4, 8]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on a loaded 2-core CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyNet(torch.nn.Module):
    """x[B, Tp, Da], t[B], cond[B, C] -> [B, Tp, Da]: a stand-in denoiser or noise head."""

    def __init__(self, seed: int, t_scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(
            torch.nn.Linear(TP * DA + 1 + C, 16), torch.nn.Tanh(), torch.nn.Linear(16, TP * DA)
        )
        self.t_scale = t_scale

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.flatten(1), t[:, None] / self.t_scale, cond], 1)
        return self.body(h).view_as(x)


def _fns(t_scale: float = 1.0):
    cond = torch.randn(B, C, generator=torch.Generator().manual_seed(7))
    net, head = TinyNet(0, t_scale), TinyNet(1, t_scale)
    return net, head, (lambda x, t, d: net(x, t, cond)), (lambda x, t: head(x, t, cond))


def _flow_samplers(k: int) -> list[FlowSampler]:
    return [
        FlowSampler(k, "ode"),
        FlowSampler(k, "learned_noise"),
        FlowSampler(k, "sde", noise_level=0.5),
        FlowSampler(k, "sde_hybrid", noise_level=0.5),
        FlowSampler(k, "learned_noise", log_prob_std_min=0.12),
    ]


def _diffusion_samplers(k: int) -> list[DiffusionSampler]:
    return [
        DiffusionSampler(k, mode="ddpm"),
        DiffusionSampler(10, k, mode="ddim", eta=1.0),
        DiffusionSampler(10, k, mode="ddim", eta=0.5, clip_sample=None),
        DiffusionSampler(10, k, mode="ddim", eta=1.0, std_min=0.1, log_prob_std_min=0.1),
    ]


# --- independent re-derivations of each transition (not through the sampler's code) -------
def _flow_ref(s: FlowSampler, v_fn, h_fn, x, k):
    kk, dt = s.num_steps, 1.0 / s.num_steps
    t = torch.full((x.shape[0],), k / kk)
    v = v_fn(x, t, None)
    if s.mode == "ode":
        return x + v * dt, torch.zeros_like(x)
    if s.mode == "learned_noise":
        lo, hi = math.log(s.sigma_min**2), math.log(s.sigma_max**2)
        logvar = lo + (hi - lo) * (torch.tanh(h_fn(x, t)) + 1) / 2
        std = torch.exp(0.5 * logvar)
        return x + v * dt, std.clamp(min=s.log_prob_std_min)
    # pi_RL's own formula in its own time tau = 1 - t, with v_pi = -v.
    tau, tau_next, v_pi = 1 - k / kk, 1 - (k + 1) / kk, -v
    sigma = s.noise_level * math.sqrt(tau / (1 - (tau_next if tau == 1 else tau)))
    x0_hat, x1_hat = x - tau * v_pi, x + (1 - tau) * v_pi
    mean = x0_hat * (1 - tau_next) + x1_hat * (tau_next - sigma**2 * dt / (2 * tau))
    return mean, torch.full_like(x, sigma * math.sqrt(dt))


def _diffusion_ref(s: DiffusionSampler, eps_fn, x, k):
    sched = DDPMScheduler(num_train_timesteps=s.num_train_steps, beta_schedule="squaredcos_cap_v2")
    ac = sched.alphas_cumprod.double()
    step = s.num_train_steps // s.num_steps
    t = (s.num_steps - 1 - k) * step
    ab = float(ac[t])
    abp = float(ac[t - step]) if t - step >= 0 else 1.0
    eps = eps_fn(x, torch.full((x.shape[0],), float(t)), None)
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    if s.clip_sample is not None:
        x0 = x0.clamp(-s.clip_sample, s.clip_sample)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    beta_tilde = (1 - abp) / (1 - ab) * (1 - ab / abp)
    if s.mode == "ddpm":
        alpha = ab / abp
        mean = (math.sqrt(abp) * (1 - alpha) * x0 + math.sqrt(alpha) * (1 - abp) * x) / (1 - ab)
        var = beta_tilde
    else:
        var = s.eta**2 * beta_tilde
        mean = math.sqrt(abp) * x0 + math.sqrt(1 - abp - var) * eps
    return mean, torch.full_like(x, math.sqrt(var)).clamp(min=s.std_min)


def _ref_log_probs(chain: Chain, ref_step, floor: float) -> torch.Tensor:
    out = []
    for k in range(chain.num_steps):
        x, x_next = chain.states[:, k], chain.states[:, k + 1]
        mean, std = ref_step(x, k)
        if chain.sde_step is not None:  # hybrid: only the drawn step is stochastic
            std = torch.where((chain.sde_step == k)[:, None, None], std, torch.zeros_like(std))
        live = std > 0
        std = torch.where(live, std.clamp(min=floor), torch.ones_like(std))
        lp = Normal(mean, std).log_prob(x_next)
        out.append(torch.where(live, lp, torch.zeros_like(lp)).flatten(1).sum(1))
    return torch.stack(out, 1)


# --- 1. the PPO ratio is exactly 1 after a rollout, for every sampler and K ----------------
@pytest.mark.parametrize("k", KS)
def test_flow_log_prob_recomputation_is_exact(k):
    _, _, v_fn, h_fn = _fns()
    for s in _flow_samplers(k):
        with torch.no_grad():
            chain = s.sample(v_fn, h_fn, SHAPE, torch.Generator().manual_seed(k))
            new = s.log_prob(v_fn, h_fn, chain)
            ref = _ref_log_probs(
                chain, lambda x, j, s=s: _flow_ref(s, v_fn, h_fn, x, j), s.log_prob_std_min
            )
        assert chain.states.shape == (B, k + 1, TP, DA) and chain.log_probs.shape == (B, k)
        torch.testing.assert_close(new, chain.log_probs, atol=1e-5, rtol=0)
        torch.testing.assert_close(ref, chain.log_probs, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(torch.exp(new - chain.log_probs), torch.ones(B, k))
        if s.mode == "ode":
            assert torch.all(chain.log_probs == 0)
        else:
            assert torch.all(chain.log_probs.sum(1) != 0)


@pytest.mark.parametrize("k", KS)
def test_diffusion_log_prob_recomputation_is_exact(k):
    _, _, eps_fn, _ = _fns(t_scale=10.0)
    for s in _diffusion_samplers(k):
        with torch.no_grad():
            chain = s.sample(eps_fn, None, SHAPE, torch.Generator().manual_seed(k))
            new = s.log_prob(eps_fn, None, chain)
            ref = _ref_log_probs(
                chain, lambda x, j, s=s: _diffusion_ref(s, eps_fn, x, j), s.log_prob_std_min
            )
        torch.testing.assert_close(new, chain.log_probs, atol=1e-5, rtol=0)
        torch.testing.assert_close(ref, chain.log_probs, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(torch.exp(new - chain.log_probs), torch.ones(B, k))
        assert torch.isfinite(chain.total_log_prob()).all()


def test_total_log_prob_and_minibatch_index():
    _, _, v_fn, h_fn = _fns()
    s = FlowSampler(4, "learned_noise")
    chain = s.sample(v_fn, h_fn, SHAPE, torch.Generator().manual_seed(0))
    prior = Normal(0.0, 1.0).log_prob(chain.states[:, 0]).flatten(1).sum(1)
    torch.testing.assert_close(chain.total_log_prob(), prior + chain.log_probs.sum(1))
    part = chain.index(torch.tensor([1, 3]))
    assert torch.equal(part.action, chain.action[[1, 3]])


# --- 2. Flow-SDE keeps the ODE's marginals (toy 2-D mixture with the exact velocity) -------
MU = torch.tensor([[-1.5, 0.5], [1.5, -0.5]], dtype=torch.float64)
SD = torch.tensor([0.3, 0.5], dtype=torch.float64)
W = torch.tensor([0.3, 0.7], dtype=torch.float64)


def _mixture_velocity(x: torch.Tensor, t: torch.Tensor, d=None) -> torch.Tensor:
    """E[a - x0 | x_t = x] for x_t = (1-t) x0 + t a, x0 ~ N(0, I), a ~ sum_i w_i N(mu_i, s_i^2 I).

    Given component i, x_t ~ N(t mu_i, V_i I) with V_i = (1-t)^2 + t^2 s_i^2, and
    E[a | x, i] = mu_i + t s_i^2 / V_i (x - t mu_i), E[x0 | x, i] = (1-t) / V_i (x - t mu_i),
    so v_i = mu_i + (t s_i^2 - (1-t)) / V_i (x - t mu_i); v = sum_i p(i | x) v_i.
    """
    t = t[:, None, None]  # [N, 1, 1] against components [1, 2, 1]
    var = (1 - t) ** 2 + t**2 * SD[None, :, None] ** 2  # [N, 2, 1]
    r = x[:, None, :] - t * MU[None]  # [N, 2, D]
    logw = W.log()[None, :, None] - 0.5 * (r.square().sum(-1, keepdim=True) / var + 2 * var.log())
    post = torch.softmax(logw, 1)
    v_i = MU[None] + (t * SD[None, :, None] ** 2 - (1 - t)) / var * r
    return (post * v_i).sum(1)


def _stats(a: torch.Tensor):
    return a.mean(0), torch.cov(a.T), (a[:, 0] > 0).double().mean()


def test_flow_sde_keeps_ode_marginals():
    n, k = 20000, 100  # Euler at K=50 still leaves ~0.07 error in the covariance
    true_mean = (W[:, None] * MU).sum(0)
    second = sum(
        w * (s**2 * torch.eye(2) + torch.outer(m, m)) for w, m, s in zip(W, MU, SD, strict=True)
    )
    true_cov = second - torch.outer(true_mean, true_mean)
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for mode in ["ode", "sde", "sde_hybrid"]:
        s = FlowSampler(k, mode, noise_level=0.5)
        g = torch.Generator().manual_seed(1)
        a = s.sample(_mixture_velocity, None, None, g, x0=x0).action
        mean, cov, w_right = _stats(a)
        torch.testing.assert_close(mean, true_mean, atol=0.04, rtol=0)
        torch.testing.assert_close(cov, true_cov, atol=0.06, rtol=0)
        assert abs(w_right - W[1]) < 0.015, (mode, w_right)


# --- 3. noise off: every stochastic sampler reduces to its deterministic one -----------------
def test_flow_noise_off_equals_ode():
    _, _, v_fn, h_fn = _fns()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    ode = FlowSampler(4, "ode").sample(v_fn, None, SHAPE, x0=x0)
    det = FlowSampler(4, "learned_noise").sample(v_fn, None, SHAPE, deterministic=True, x0=x0)
    sde0 = FlowSampler(4, "sde", noise_level=0.0).sample(v_fn, None, SHAPE, x0=x0)
    for other in (det, sde0):
        torch.testing.assert_close(other.states, ode.states, atol=1e-6, rtol=0)
        assert torch.all(other.log_probs == 0)
    for mode in ("sde", "sde_hybrid"):
        d = FlowSampler(4, mode).sample(v_fn, None, SHAPE, deterministic=True, x0=x0)
        torch.testing.assert_close(d.states, ode.states, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="noise_fn"):
        FlowSampler(4, "learned_noise").sample(v_fn, None, SHAPE)


@pytest.mark.parametrize("clip", [1.0, None])
def test_ddim_matches_diffusers(clip):
    n, k = 20, 4
    ours = DiffusionSampler(n, k, mode="ddim", eta=0.0, clip_sample=clip)
    noisy = DiffusionSampler(n, k, mode="ddim", eta=1.0, clip_sample=clip)
    ref = DDIMScheduler(
        num_train_timesteps=n,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=clip is not None,
        clip_sample_range=clip or 1.0,
    )
    ref.set_timesteps(k)
    assert ref.timesteps.tolist() == ours.timesteps
    g = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(SHAPE, generator=g)  # large enough that clipping bites
    for j, t in enumerate(ours.timesteps):
        eps = torch.randn(SHAPE, generator=g)
        z = torch.randn(SHAPE, generator=g)
        out0 = ref.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        out1 = ref.step(eps, t, x, eta=1.0, use_clipped_model_output=True, variance_noise=z)
        mean, std = ours.transition(lambda *_, e=eps: e, None, x, j)
        assert torch.all(std == 0)
        torch.testing.assert_close(mean, out0, atol=1e-5, rtol=1e-5)
        mean1, std1 = noisy.transition(lambda *_, e=eps: e, None, x, j)
        torch.testing.assert_close(mean1 + std1 * z, out1.prev_sample, atol=1e-5, rtol=1e-5)
        det1, _ = noisy.transition(lambda *_, e=eps: e, None, x, j, deterministic=True)
        torch.testing.assert_close(det1, out0, atol=1e-5, rtol=1e-5)
        x = out0
    _, _, eps_fn, _ = _fns(t_scale=10.0)
    chain = ours.sample(eps_fn, None, SHAPE, torch.Generator().manual_seed(1))
    x0 = chain.states[:, 0]
    again = ours.sample(eps_fn, None, SHAPE, torch.Generator().manual_seed(2), x0=x0)
    assert torch.equal(chain.states, again.states) and torch.all(chain.log_probs == 0)


def test_ddpm_matches_diffusers_posterior():
    n = 10
    ours = DiffusionSampler(n, mode="ddpm", clip_sample=1.0)
    ref = DDPMScheduler(num_train_timesteps=n, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    ref.set_timesteps(n)
    assert ref.timesteps.tolist() == ours.timesteps
    posterior = DiffusionSampler(n, mode="ddpm", clip_sample=1.0, deterministic_mean="posterior")
    ddim = DDIMScheduler(num_train_timesteps=n, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    ddim.set_timesteps(n)
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(SHAPE, generator=g)
    for j, t in enumerate(ours.timesteps):
        eps = torch.randn(SHAPE, generator=g)
        out = ref.step(eps, t, x, generator=torch.Generator().manual_seed(j)).prev_sample
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(j))
        mean, std = ours.transition(lambda *_, e=eps: e, None, x, j)
        torch.testing.assert_close(
            std[0, 0, 0] ** 2,
            ref._get_variance(t) if t > 0 else torch.tensor(0.0),
            atol=1e-7,
            rtol=1e-5,
        )
        torch.testing.assert_close(mean + (std * z if t > 0 else 0), out, atol=1e-5, rtol=1e-5)
        det, dstd = ours.transition(lambda *_, e=eps: e, None, x, j, deterministic=True)
        ddim0 = ddim.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(det, ddim0, atol=1e-5, rtol=1e-5)  # probability-flow step
        post, _ = posterior.transition(lambda *_, e=eps: e, None, x, j, deterministic=True)
        assert torch.equal(post, mean) and torch.all(dstd == 0)
        x = out


def test_training_helpers():
    s = DiffusionSampler(10, mode="ddpm")
    ref = DDPMScheduler(num_train_timesteps=10, beta_schedule="squaredcos_cap_v2")
    a, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    ts = s.sample_train_timesteps(B, torch.Generator().manual_seed(0))
    x_noisy, target = s.training_target(a, noise, ts)
    torch.testing.assert_close(x_noisy, ref.add_noise(a, noise, ts))
    assert torch.equal(target, noise)
    t = torch.rand(B)
    x_t, v = flow_training_pair(a, noise, t)
    torch.testing.assert_close(x_t, (1 - t[:, None, None]) * noise + t[:, None, None] * a)
    assert torch.equal(v, a - noise)
    grid = TimeGrid(4)
    assert grid.times.tolist() == [0, 0.25, 0.5, 0.75, 1] and grid.step_sizes.sum() == 1


# --- 4. sigma bounds, hybrid structure, gradients ------------------------------------------
def test_learned_noise_std_bounds():
    s = FlowSampler(4, "learned_noise", sigma_min=0.05, sigma_max=0.14)
    raw = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4])
    std = s.bounded_std(raw)
    assert torch.all(std >= 0.05 - 1e-7) and torch.all(std <= 0.14 + 1e-7)
    torch.testing.assert_close(std[[0, -1]], torch.tensor([0.05, 0.14]))
    torch.testing.assert_close(std[2], torch.tensor(math.sqrt(0.05 * 0.14)))  # geometric mid


def test_hybrid_has_one_stochastic_step():
    s = FlowSampler(8, "sde_hybrid")
    cond = torch.randn(64, C)
    net = TinyNet(0)
    chain = s.sample(
        lambda x, t, d: net(x, t, cond), None, (64, TP, DA), torch.Generator().manual_seed(0)
    )
    nonzero = chain.log_probs != 0
    assert torch.all(nonzero.sum(1) == 1)
    assert torch.equal(nonzero.float().argmax(1), chain.sde_step)
    assert len(chain.sde_step.unique()) > 1


def test_gaussian_log_prob_zero_std_is_finite():
    x = torch.randn(3, 2, requires_grad=True)
    mean = torch.zeros(3, 2, requires_grad=True)
    std = torch.tensor([[0.0, 0.5]] * 3, requires_grad=True)
    lp = gaussian_log_prob(x, mean, std)
    lp.sum().backward()
    torch.testing.assert_close(lp, Normal(0.0, 0.5).log_prob(x[:, 1]).detach())
    for g in (x.grad, mean.grad, std.grad):
        assert torch.isfinite(g).all() and torch.all(g[:, 0] == 0)


@pytest.mark.parametrize("mode", ["learned_noise", "sde", "sde_hybrid"])
def test_log_prob_gradients_reach_parameters(mode):
    net, head, v_fn, h_fn = _fns()
    s = FlowSampler(4, mode)
    with torch.no_grad():
        chain = s.sample(v_fn, h_fn, SHAPE, torch.Generator().manual_seed(0))
    s.log_prob(v_fn, h_fn, chain).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    if mode == "learned_noise":
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_diffusion_log_prob_gradients():
    net, _, eps_fn, _ = _fns(t_scale=10.0)
    s = DiffusionSampler(10, 4, mode="ddim", clip_sample=None, std_min=0.1, log_prob_std_min=0.1)
    with torch.no_grad():
        chain = s.sample(eps_fn, None, SHAPE, torch.Generator().manual_seed(0))
    s.log_prob(eps_fn, None, chain).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


# --- 5. reproducibility, dtype ----------------------------------------------------------
@pytest.mark.parametrize("mode", ["learned_noise", "sde_hybrid", "ddpm"])
def test_same_seed_same_chain(mode):
    _, _, fn, h_fn = _fns()
    s = DiffusionSampler(4, mode="ddpm") if mode == "ddpm" else FlowSampler(4, mode)
    c1 = s.sample(fn, h_fn, SHAPE, torch.Generator().manual_seed(5))
    c2 = s.sample(fn, h_fn, SHAPE, torch.Generator().manual_seed(5))
    c3 = s.sample(fn, h_fn, SHAPE, torch.Generator().manual_seed(6))
    assert torch.equal(c1.states, c2.states) and torch.equal(c1.log_probs, c2.log_probs)
    assert not torch.equal(c1.states, c3.states)
    assert c1.states.dtype == torch.float32 and c1.log_probs.shape == (B, 4)


def test_float64_chain():
    s = FlowSampler(3, "sde")
    chain = s.sample(
        _mixture_velocity, None, (6, 2), torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert chain.states.dtype == torch.float64 and chain.log_probs.dtype == torch.float64
    torch.testing.assert_close(
        s.log_prob(_mixture_velocity, None, chain), chain.log_probs, atol=1e-12, rtol=0
    )
