"""Policy configuration: validated at construction, saved as config.json with the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from embodied.core.errors import ConfigError

KINDS = ("flow", "shortcut", "diffusion", "gaussian")
FLOW_SAMPLERS = ("ode", "learned_noise", "sde", "sde_hybrid")
DIFFUSION_SAMPLERS = ("ddpm", "ddim")


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy. Dims come from the env/dataset, not by hand.

    Shapes: To = n_obs_steps (observation history), Tp = horizon (predicted actions),
    Ta = n_action_steps (executed per policy call, Ta <= Tp), Do = obs_dim, Da = action_dim.
    """

    kind: str = "flow"
    """flow (rectified flow), shortcut (flow + step-size input, 1-4 steps), diffusion
    (DDPM/DDIM eps-prediction), gaussian (an MLP with a Gaussian head; baselines)."""
    obs_dim: int = 0
    action_dim: int = 0
    n_obs_steps: int = 1
    horizon: int = 4
    n_action_steps: int = 4
    cameras: list[str] = field(default_factory=list)
    image_size: int = 96
    net: str = "mlp"
    """Denoiser: mlp, unet (1-D temporal U-Net), transformer."""
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_hidden: int | None = None
    """None: the flattened (normalised) state history is the conditioning; int: an MLP."""
    encoder_out_dim: int = 64
    num_steps: int = 4
    """Denoising steps K at inference (flow/shortcut Euler steps, DDIM steps)."""
    num_train_steps: int = 100
    """Diffusion: training timesteps (DDPM samples with all of them)."""
    sampler: str = ""
    """flow: ode | learned_noise | sde | sde_hybrid; diffusion: ddpm | ddim. "" = ode/ddpm."""
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    noise_head: bool = False
    """A learned exploration-noise head (ReinFlow / Flow-Noise), created for fine-tuning."""
    frozen_steps: int = 0
    """DPPO: the first `frozen_steps` denoising steps run a frozen copy of the base encoder
    and denoiser (fine-tuning trains only the last K - frozen_steps steps)."""
    shortcut_max_steps: int = 128
    """Shortcut model: the finest step size trained is 1/shortcut_max_steps."""
    shortcut_self_consistency: float = 0.25
    """Share of each batch trained on the self-consistency target."""
    squash: bool = False
    """gaussian: actions are tanh of the Gaussian draw (SAC's actor; `rsample_squashed`);
    net_kwargs then go to its GaussianMLP (e.g. state_dependent_std=True)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"policy kind must be one of {KINDS}, got {self.kind!r}")
        if not self.sampler:
            self.sampler = "ddpm" if self.kind == "diffusion" else "ode"
        valid = DIFFUSION_SAMPLERS if self.kind == "diffusion" else FLOW_SAMPLERS
        if self.kind != "gaussian" and self.sampler not in valid:
            raise ConfigError(f"a {self.kind} policy samples with one of {valid}, "
                              f"got sampler={self.sampler!r}")
        if self.cameras and not (isinstance(self.image_size, int) and self.image_size >= 16):
            raise ConfigError(f"image_size must be an integer >= 16 (the image encoder's "
                              f"smallest input), got {self.image_size!r}")
        if self.obs_dim <= 0 or self.action_dim <= 0:
            raise ConfigError("obs_dim and action_dim must be positive: take them from the "
                              "env (env.obs_dim, env.action_dim) or the dataset's features")
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ConfigError(f"need 1 <= n_action_steps (Ta={self.n_action_steps}) <= "
                              f"horizon (Tp={self.horizon})")
        if self.n_obs_steps < 1 or self.num_steps < 1:
            raise ConfigError("n_obs_steps and num_steps must be >= 1")
        if self.kind == "diffusion" and self.sampler == "ddpm":
            self.num_steps = self.num_train_steps  # DDPM runs the whole chain
        if self.squash and self.kind != "gaussian":
            raise ConfigError(f"squash is for gaussian policies (SAC), not {self.kind!r}")
        if not 0 <= self.frozen_steps < max(self.num_steps, 1) or (
                self.frozen_steps and self.kind == "gaussian"):
            raise ConfigError(f"frozen_steps must be in [0, num_steps={self.num_steps}) for a "
                              f"chain policy (at least one step trains), got {self.frozen_steps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown policy config keys {unknown}; this version knows "
                              f"{sorted(known)} (was the checkpoint made by a newer version?)")
        return cls(**data)
