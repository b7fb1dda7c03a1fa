"""Samplers: the one object that owns a denoising chain's time grid and per-step transitions.

Shape legend (as in `embodied.policies`):
    B  batch (envs x chunks)        K  denoising steps of the chain
    *event  the action-chunk dims, usually (Tp, Da)
    states[B, K+1, *event]  chain states; index 0 = initial noise x_0, index K = the action
    log_probs[B, K]         log N(x_{k+1}; mean_k, std_k^2) summed over *event (0 if std_k = 0)

Every sampler exposes the same three calls, and rollout sampling and PPO log-likelihood
recomputation both go through `transition`, so re-scoring a stored chain with unchanged
parameters reproduces the stored log-probs (the PPO ratio is 1 on the first minibatch;
ReinFlow's public code broke this by using two different time grids).

    chain = sampler.sample(denoise_fn, noise_fn, shape, generator)       -> Chain
    mean, std = sampler.transition(denoise_fn, noise_fn, x_k, k)          -> [B, *event] x2
    log_probs = sampler.log_prob(denoise_fn, noise_fn, chain)             -> [B, K]

`sample` is differentiable (a BC regulariser may back-propagate through a deterministic
chain); wrap rollouts in `torch.no_grad()`. Chain states are never clipped: any action
clipping happens downstream in the env wrapper and is not part of the log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from embodied.policies.config import DIFFUSION_SAMPLERS, FLOW_SAMPLERS

DenoiseFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]  # (x, t[B], d[B] | None)
NoiseFn = Callable[[Tensor, Tensor], Tensor]  # (x, t[B]) -> raw noise-head output
_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor | float, std: Tensor | float) -> Tensor:
    """log N(x; mean, std^2) summed over all dims but the first -> [B].

    Elements with std == 0 (deterministic transitions) contribute 0 instead of NaN/inf, and
    their gradient is 0 too (the std is replaced by 1 before the division, then masked).
    """
    std = torch.broadcast_to(torch.as_tensor(std, dtype=x.dtype, device=x.device), x.shape)
    stochastic = std > 0
    safe = torch.where(stochastic, std, torch.ones_like(std))
    z = (x - mean) / safe
    lp = -0.5 * z.square() - safe.log() - 0.5 * _LOG_2PI
    return torch.where(stochastic, lp, torch.zeros_like(lp)).flatten(1).sum(1)


def flow_training_pair(action: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Rectified-flow BC pair: x_t = (1 - t) noise + t action, target velocity action - noise.

    t: [B] in [0, 1] (0 = noise, 1 = action), broadcast over the event dims.
    """
    tb = t.reshape(-1, *([1] * (action.dim() - 1))).to(action.dtype)
    return (1.0 - tb) * noise + tb * action, action - noise


@dataclass
class Chain:
    """A stored denoising chain (one per policy call); old log-probs come from here."""

    states: Tensor  # [B, K+1, *event]; states[:, 0] = x_0 noise, states[:, K] = action (unclipped)
    log_probs: Tensor  # [B, K] per-transition log-density at sampling time (0 if deterministic)
    sde_step: Tensor | None = None  # [B] long: the one stochastic step of a hybrid Flow-SDE chain

    @property
    def action(self) -> Tensor:
        return self.states[:, -1]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    def total_log_prob(self) -> Tensor:
        """Exact joint chain log-likelihood log N(x_0; 0, I) + sum_k log p(x_{k+1} | x_k) -> [B].

        Not divided by K+1 (RLinf does so); the x_0 term has no parameters, so it cancels in
        PPO ratios but keeps the value a true log-density.
        """
        return gaussian_log_prob(self.states[:, 0], 0.0, 1.0) + self.log_probs.sum(1)

    def index(self, idx: Tensor | slice) -> Chain:
        """Rows `idx` of the chain (minibatching)."""
        step = None if self.sde_step is None else self.sde_step[idx]
        return Chain(self.states[idx], self.log_probs[idx], step)


def _at(table: Sequence[float], k: int | Tensor, like: Tensor) -> float | Tensor:
    """Per-step constant for step k: a Python float (k int) or a column [B, 1, ...] (k [B])."""
    if isinstance(k, int):
        return table[k]
    col = torch.tensor(table, dtype=like.dtype, device=like.device)[k]
    return col.reshape(-1, *([1] * (like.dim() - 1)))


def _batch_col(table: Sequence[float], k: int | Tensor, x: Tensor) -> Tensor:
    """The same constant as a [B] tensor (the time input of the nets)."""
    if isinstance(k, int):
        return x.new_full((x.shape[0],), table[k])
    return torch.tensor(table, dtype=x.dtype, device=x.device)[k]


def _mean_log_std(std: Tensor) -> Tensor:
    """Mean log-std over the stochastic elements of each row [B] (0 for a deterministic row)."""
    stochastic = std > 0
    logs = torch.where(stochastic, std, torch.ones_like(std)).log().flatten(1)
    count = stochastic.flatten(1).sum(1).clamp(min=1)
    return logs.sum(1) / count


def _full(val: float | Tensor, x: Tensor) -> Tensor:
    if isinstance(val, Tensor):
        return val.expand_as(x)
    return x.new_full(x.shape, val)


class _ChainSampler:
    """Shared rollout / re-scoring loops; subclasses define `num_steps` and `transition`."""

    num_steps: int
    log_prob_std_min: float

    # transition(denoise_fn, noise_fn, x, k, sde_mask=None, *, deterministic=False) -> (mean, std)
    transition: Callable[..., tuple[Tensor, Tensor]]

    @property
    def stochastic(self) -> bool:
        return True

    def _check(self, chain: Chain) -> None:
        if chain.num_steps != self.num_steps:
            raise ValueError(f"chain has {chain.num_steps} steps, sampler {self.num_steps}")

    def score(self, x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """Transition log-density with the scoring floor `log_prob_std_min` (DPPO: 0.1).

        The floor only applies to stochastic transitions (std > 0); deterministic ones score 0.
        With a floor above the sampling std this is the density of a WIDER Gaussian than the
        one sampled from: not the true likelihood, but used identically at rollout and update
        time, so the PPO ratio is still exactly 1 on the first minibatch.
        """
        if self.log_prob_std_min > 0:
            std = torch.where(std > 0, std.clamp(min=self.log_prob_std_min), std)
        return gaussian_log_prob(x_next, mean, std)

    def _draw_sde_step(self, b: int, gen: torch.Generator | None, device) -> Tensor | None:
        return None

    def sample(
        self,
        denoise_fn: DenoiseFn,
        noise_fn: NoiseFn | None,
        shape: Sequence[int] | None,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
        x0: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        prefix_fns: tuple[DenoiseFn, NoiseFn | None] | None = None,
        prefix_steps: int = 0,
    ) -> Chain:
        """Run the chain from x_0 ~ N(0, I) (or the given `x0`) to the action.

        Random draws, in order, all from `generator`: x_0, the hybrid SDE step, then one
        standard normal per step. deterministic=True: noise-free means and zero log-probs.
        prefix_fns: (denoiser, noise net) of the first `prefix_steps` steps (DPPO: the
        frozen base, noise included, so nothing of those steps trains).
        """
        if x0 is None:
            if shape is None:
                raise ValueError("sample needs `shape` or `x0`")
            if device is None and generator is not None:
                device = generator.device
            x0 = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        elif shape is not None and tuple(x0.shape) != tuple(shape):
            raise ValueError(f"x0 shape {tuple(x0.shape)} != shape {tuple(shape)}")
        deterministic = deterministic or not self.stochastic
        x, b = x0, x0.shape[0]
        sde_step = None if deterministic else self._draw_sde_step(b, generator, x.device)
        states, log_probs = [x], []
        for k in range(self.num_steps):
            mask = None if sde_step is None else sde_step == k
            fn, nfn = (prefix_fns if prefix_fns is not None and k < prefix_steps
                       else (denoise_fn, noise_fn))
            mean, std = self.transition(fn, nfn, x, k, mask, deterministic=deterministic)
            if deterministic:
                x, lp = mean, x.new_zeros(b)
            else:
                eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = mean + std * eps
                lp = self.score(x, mean, std)
            states.append(x)
            log_probs.append(lp)
        return Chain(torch.stack(states, 1), torch.stack(log_probs, 1), sde_step)

    def log_prob(self, denoise_fn: DenoiseFn, noise_fn: NoiseFn | None, chain: Chain,
                 first: int = 0) -> Tensor:
        """Per-transition log-densities [B, K - first] of steps first..K-1 of a stored chain,
        through the same transitions (DPPO scores only its last K' = K - first steps).

        Scores as the stochastic sampler; a chain drawn with deterministic=True has no density.
        """
        return self.score_steps(denoise_fn, noise_fn, chain, first)[0]

    def score_steps(self, denoise_fn: DenoiseFn, noise_fn: NoiseFn | None, chain: Chain,
                    first: int = 0) -> tuple[Tensor, Tensor]:
        """(log-densities, mean log-std) [B, K - first] each; the log-std (of stochastic
        elements, 0 where deterministic) gives the entropy bonus and per-step noise logs."""
        self._check(chain)
        s = chain.states
        if not 0 <= first < self.num_steps:
            raise ValueError(f"first must be in [0, {self.num_steps}), got {first}")
        if not self.stochastic:
            zeros = s.new_zeros(s.shape[0], self.num_steps - first)
            return zeros, zeros
        lps, log_stds = [], []
        for k in range(first, self.num_steps):
            mask = None if chain.sde_step is None else chain.sde_step == k
            mean, std = self.transition(denoise_fn, noise_fn, s[:, k], k, mask)
            lps.append(self.score(s[:, k + 1], mean, std))
            log_stds.append(_mean_log_std(std))
        return torch.stack(lps, 1), torch.stack(log_stds, 1)


@dataclass(frozen=True)
class TimeGrid:
    """Uniform flow-time grid t_k = k / K, k = 0..K (t = 0 noise, t = 1 action)."""

    num_steps: int

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")

    @property
    def times(self) -> Tensor:  # [K+1] float64
        return torch.arange(self.num_steps + 1, dtype=torch.float64) / self.num_steps

    @property
    def step_sizes(self) -> Tensor:  # [K] float64
        return torch.diff(self.times)


FLOW_MODES = FLOW_SAMPLERS


class FlowSampler(_ChainSampler):
    """Euler chains of a flow policy v(x, t), t in [0, 1] (0 = noise, 1 = action).

    Modes (dt = 1/K, t_k = k/K):
      "ode"            x_{k+1} = x_k + v dt (deterministic; log-probs 0).
      "learned_noise"  ReinFlow / pi_RL Flow-Noise: mean x_k + v dt, per-dim std from the
                       noise head h: log s^2 = log smin^2 + (log smax^2 - log smin^2)(tanh h + 1)/2.
      "sde"            pi_RL Flow-SDE, every step stochastic (noise level a = noise_level).
      "sde_hybrid"     one uniformly drawn SDE step per chain (`Chain.sde_step`), the rest ODE;
                       only that step has a nonzero log-prob (re-scored with one net call).

    Flow-SDE in our convention. pi_RL writes tau = 1 - t (tau = 1 noise, tau = 0 action),
    x = tau eps + (1 - tau) a, velocity v_pi = dx/dtau = -v, delta = tau_k - tau_{k+1} = dt,
    x0_hat = x - tau v_pi = x + (1 - t) v   (action estimate),
    x1_hat = x + (1 - tau) v_pi = x - t v   (noise estimate),
    sigma = a sqrt(tau / (1 - tau)),  std = sigma sqrt(delta),
    mean = x0_hat (1 - tau_{k+1}) + x1_hat (tau_{k+1} - sigma^2 delta / (2 tau)).
    Expanding, x0_hat (1 - tau_{k+1}) + x1_hat tau_{k+1} = x + v dt, so we compute
    mean = x + v dt - sigma^2 dt / (2 tau) * (x - t v): the Euler step plus the score
    correction (score = -x1_hat / tau), exactly the Euler mean when a = 0.
    Guard at tau = 1 (k = 0, where sigma is infinite): there sigma = a sqrt(tau_0 / (1 - tau_1))
    = a sqrt(K), the next grid point standing in for tau in the denominator.
    """

    def __init__(
        self,
        num_steps: int,
        mode: str = "ode",
        *,
        noise_level: float = 0.5,
        sigma_min: float = 0.08,
        sigma_max: float = 0.16,
        log_prob_std_min: float = 0.0,
        step_size_input: bool = False,
    ) -> None:
        """step_size_input: pass d = dt to denoise_fn (shortcut models); None otherwise."""
        if mode not in FLOW_MODES:
            raise ValueError(f"mode must be one of {FLOW_MODES}, got {mode!r}")
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        if noise_level < 0 or log_prob_std_min < 0:
            raise ValueError("noise_level and log_prob_std_min must be >= 0")
        self.grid = TimeGrid(num_steps)
        self.num_steps, self.mode = num_steps, mode
        self.noise_level, self.sigma_min, self.sigma_max = noise_level, sigma_min, sigma_max
        self.log_prob_std_min, self.step_size_input = log_prob_std_min, step_size_input
        # Per-step constants as Python floats, from the one grid (float64 arithmetic).
        t = self.grid.times.tolist()
        self._t, self._dt = t[:-1], self.grid.step_sizes.tolist()
        self._sde_std, self._sde_corr = [], []
        for k in range(num_steps):
            tau, tau_next = 1.0 - t[k], 1.0 - t[k + 1]
            denom = 1.0 - tau_next if k == 0 else 1.0 - tau  # t = 0 guard (tau = 1)
            sigma = noise_level * math.sqrt(tau / denom)
            self._sde_std.append(sigma * math.sqrt(self._dt[k]))
            self._sde_corr.append(sigma**2 * self._dt[k] / (2.0 * tau))

    @property
    def stochastic(self) -> bool:
        return self.mode != "ode"

    def bounded_std(self, raw: Tensor) -> Tensor:
        """Map the noise head's raw output into [sigma_min, sigma_max] (log-variance tanh)."""
        lo, hi = 2.0 * math.log(self.sigma_min), 2.0 * math.log(self.sigma_max)
        return torch.exp(0.5 * (lo + (hi - lo) * (torch.tanh(raw) + 1.0) / 2.0))

    def _draw_sde_step(self, b: int, gen: torch.Generator | None, device) -> Tensor | None:
        if self.mode != "sde_hybrid":
            return None
        return torch.randint(self.num_steps, (b,), generator=gen, device=device)

    def transition(
        self,
        denoise_fn: DenoiseFn,
        noise_fn: NoiseFn | None,
        x: Tensor,
        k: int | Tensor,
        sde_mask: Tensor | None = None,
        *,
        deterministic: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """(mean, std) of step k (int, or [B] long for per-row steps), both [B, *event].

        sde_mask [B] bool (Flow-SDE modes): rows taking the SDE step, the others the ODE step
        with std 0; None = every row stochastic. deterministic=True: the ODE step, std 0.
        """
        t_in = _batch_col(self._t, k, x)
        d_in = _batch_col(self._dt, k, x) if self.step_size_input else None
        v = denoise_fn(x, t_in, d_in)
        ode_mean = x + v * _at(self._dt, k, x)
        if deterministic or self.mode == "ode":
            return ode_mean, torch.zeros_like(x)
        if self.mode == "learned_noise":
            if noise_fn is None:
                raise ValueError("mode 'learned_noise' needs a noise_fn unless deterministic")
            return ode_mean, self.bounded_std(noise_fn(x, t_in))
        noise_hat = x - _at(self._t, k, x) * v  # x1_hat of pi_RL: the estimate of x_0
        mean = ode_mean - _at(self._sde_corr, k, x) * noise_hat
        std = _full(_at(self._sde_std, k, x), x)
        if sde_mask is None:
            return mean, std
        m = sde_mask.reshape(-1, *([1] * (x.dim() - 1)))
        return torch.where(m, mean, ode_mean), torch.where(m, std, torch.zeros_like(std))

    def score_steps(self, denoise_fn: DenoiseFn, noise_fn: NoiseFn | None, chain: Chain,
                    first: int = 0) -> tuple[Tensor, Tensor]:
        if self.mode != "sde_hybrid":
            return super().score_steps(denoise_fn, noise_fn, chain, first)
        if first:
            raise ValueError("a hybrid Flow-SDE chain scores all steps (first must be 0)")
        if chain.sde_step is None:
            raise ValueError("a hybrid Flow-SDE chain must carry sde_step (sampled stochastically)")
        self._check(chain)
        # Only the SDE step has a density: score it for all rows in one net call.
        k, rows = chain.sde_step, torch.arange(chain.states.shape[0], device=chain.states.device)
        x, x_next = chain.states[rows, k], chain.states[rows, k + 1]
        mean, std = self.transition(denoise_fn, noise_fn, x, k)
        lp = self.score(x_next, mean, std)
        out = chain.states.new_zeros(x.shape[0], self.num_steps)
        return (out.scatter(1, k[:, None], lp[:, None]),
                out.scatter(1, k[:, None], _mean_log_std(std)[:, None]))


DIFFUSION_MODES = DIFFUSION_SAMPLERS


class DiffusionSampler(_ChainSampler):
    """DDPM / DDIM chains of an eps-prediction net, as Gaussian per-step policies (DPPO).

    Chain index k runs over timesteps tau_0 > ... > tau_{K-1} (integers), from x_0 ~ N(0, I)
    at tau_0 down to the action; the step after tau_{K-1} lands at "t = -1" (abar = 1).
    betas / alphas_cumprod come from diffusers' DDPMScheduler; the mean/std are written here
    so sampling and scoring share one formula (they match diffusers' DDPM/DDIM `step`).
      x0_hat = clip((x - sqrt(1 - abar_t) eps) / sqrt(abar_t))   (clip_sample; part of the mean,
               a deterministic function of x_t, so the log-prob stays exact; states unclipped)
      "ddpm"  (K = num_train_steps) posterior q(x_prev | x_t, x0_hat), variance "fixed_small"
              beta_tilde = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev).
      "ddim"  timesteps as diffusers' "leading" spacing ((K-1..0) * (N // K)), as DPPO;
              sigma^2 = eta^2 beta_tilde, eps_hat recomputed from the clipped x0_hat (diffusers'
              use_clipped_model_output=True, DPPO), mean = sqrt(abar_prev) x0_hat
              + sqrt(1 - abar_prev - sigma^2) eps_hat.
    deterministic=True: the DDIM eta = 0 mean on the sampler's own timesteps (the noise-free
    probability-flow step; for "ddpm" on all N timesteps). deterministic_mean="posterior"
    gives DDPM's posterior mean without noise instead (DPPO's eval), which shrinks samples
    toward the data mean and can collapse a multimodal policy onto one mode.
    std_min (DPPO 0.1): floor on the sampling std at every step, the last included (whose
    own std is 0). log_prob_std_min (DPPO 0.1): floor on the std used for scoring; see `score`.
    """

    def __init__(
        self,
        num_train_steps: int = 100,
        num_steps: int | None = None,
        mode: str = "ddpm",
        *,
        eta: float = 1.0,
        beta_schedule: str = "squaredcos_cap_v2",
        clip_sample: float | None = 1.0,
        std_min: float = 0.0,
        log_prob_std_min: float = 0.0,
        deterministic_mean: str = "ddim",
    ) -> None:
        from diffusers import DDPMScheduler  # heavy import, only when a diffusion policy is used

        if mode not in DIFFUSION_MODES:
            raise ValueError(f"mode must be one of {DIFFUSION_MODES}, got {mode!r}")
        k_steps = num_train_steps if num_steps is None else num_steps
        if mode == "ddpm" and k_steps != num_train_steps:
            raise ValueError("ddpm needs num_steps == num_train_steps (use ddim for fewer)")
        if not 1 <= k_steps <= num_train_steps:
            raise ValueError(f"need 1 <= num_steps <= {num_train_steps}, got {k_steps}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if std_min < 0 or log_prob_std_min < 0:
            raise ValueError("std_min and log_prob_std_min must be >= 0")
        if deterministic_mean not in ("ddim", "posterior"):
            raise ValueError(
                f"deterministic_mean must be 'ddim' or 'posterior': {deterministic_mean}"
            )
        sched = DDPMScheduler(num_train_timesteps=num_train_steps, beta_schedule=beta_schedule)
        self.betas = sched.betas.double()
        self.alphas_cumprod = sched.alphas_cumprod.double()
        self.num_train_steps, self.num_steps, self.mode = num_train_steps, k_steps, mode
        self.eta, self.clip_sample = eta, clip_sample
        self.std_min, self.log_prob_std_min = std_min, log_prob_std_min
        self.deterministic_mean = deterministic_mean
        ratio = num_train_steps // k_steps
        self.timesteps = [i * ratio for i in reversed(range(k_steps))]
        ac = self.alphas_cumprod.tolist()
        self._t = [float(t) for t in self.timesteps]
        rows = []
        for t in self.timesteps:
            ab = ac[t]
            abp = ac[t - ratio] if t - ratio >= 0 else 1.0
            var = (1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp)  # beta_tilde (0 at the last step)
            sig2 = var if mode == "ddpm" else eta**2 * var
            rows.append((
                math.sqrt(ab), math.sqrt(1.0 - ab), math.sqrt(abp),
                math.sqrt(abp) * (1.0 - ab / abp) / (1.0 - ab),  # DDPM posterior coef on x0_hat
                math.sqrt(ab / abp) * (1.0 - abp) / (1.0 - ab),  # ... and on x_t
                math.sqrt(sig2),
                math.sqrt(max(1.0 - abp - sig2, 0.0)),  # DDIM direction coef (eta)
                math.sqrt(1.0 - abp),  # DDIM direction coef (eta = 0)
            ))  # fmt: skip
        (self._sab, self._s1mab, self._sabp, self._c_x0, self._c_x,
         self._std, self._dir, self._dir0) = map(list, zip(*rows, strict=True))  # fmt: skip

    @property
    def stochastic(self) -> bool:
        return self.mode == "ddpm" or self.eta > 0 or self.std_min > 0

    def transition(
        self,
        denoise_fn: DenoiseFn,
        noise_fn: NoiseFn | None,
        x: Tensor,
        k: int | Tensor,
        sde_mask: Tensor | None = None,
        *,
        deterministic: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """(mean, std) of step k (int or [B] long), both [B, *event]; noise_fn/sde_mask unused."""
        eps = denoise_fn(x, _batch_col(self._t, k, x), None)
        sab, s1mab = _at(self._sab, k, x), _at(self._s1mab, k, x)
        x0_hat = (x - s1mab * eps) / sab
        if self.clip_sample is not None:
            x0_hat = x0_hat.clamp(-self.clip_sample, self.clip_sample)
            eps = (x - sab * x0_hat) / s1mab  # consistent with the clipped x0_hat (DDIM)
        if self.mode == "ddpm" and not (deterministic and self.deterministic_mean == "ddim"):
            mean = _at(self._c_x0, k, x) * x0_hat + _at(self._c_x, k, x) * x
        else:
            direction = _at(self._dir0 if deterministic else self._dir, k, x)
            mean = _at(self._sabp, k, x) * x0_hat + direction * eps
        if deterministic:
            return mean, torch.zeros_like(x)
        std = _full(_at(self._std, k, x), x)
        return mean, (std.clamp(min=self.std_min) if self.std_min > 0 else std)

    # --- BC training helpers -----------------------------------------------------------
    def add_noise(self, x_action: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Forward process q(x_t | x_action) = sqrt(abar_t) x_action + sqrt(1 - abar_t) noise."""
        ab = self.alphas_cumprod.to(x_action.device)[timesteps.long()].to(x_action.dtype)
        ab = ab.reshape(-1, *([1] * (x_action.dim() - 1)))
        return ab.sqrt() * x_action + (1.0 - ab).sqrt() * noise

    def training_target(
        self, x_action: Tensor, noise: Tensor, timesteps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """BC pair for eps-prediction: (x_noisy, eps = noise); feed the net timesteps.float()."""
        return self.add_noise(x_action, noise, timesteps), noise

    def sample_train_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device=None
    ) -> Tensor:
        """Uniform integer timesteps [batch] in [0, num_train_steps) for BC."""
        return torch.randint(self.num_train_steps, (batch,), generator=generator, device=device)
