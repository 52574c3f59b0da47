"""The model's discrete noise schedule (alphas_cumprod) and its sigma table, as k-diffusion sees it.

k-diffusion works in "sigma space": x = x0 + sigma * eps, sigma = sqrt((1 - abar) / abar). A discrete
model only knows its 1000 training timesteps, so conversions between sigma and (fractional) timestep
interpolate linearly in log-sigma between table entries (k-diffusion ``DiscreteSchedule``).

The sigma table is computed in float32 from the float32 alphas_cumprod because that is what the WebUI's
model buffers hold; sigma_min/sigma_max (used by the Karras, Exponential, ... schedules) therefore match
its numbers to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.errors import InvalidParameterError

PREDICTION_TYPES = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("scaled_linear", "linear")

# The WebUI (modules/sd_models.py, rescale_zero_terminal_snr_abar) replaces the zero terminal abar by this
# value so that sigma_max stays finite (~4500) and the first step still sees (almost) pure noise.
ZERO_SNR_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08


def make_betas(beta_start: float, beta_end: float, num_train_timesteps: int, beta_schedule: str) -> Tensor:
    """Training betas in float64. "scaled_linear" is ldm's "linear" (linear in sqrt(beta))."""
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    raise InvalidParameterError(
        "beta_schedule", f"unknown beta schedule {beta_schedule!r}", hint=f"use one of {', '.join(BETA_SCHEDULES)}"
    )


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. (2023): shift/scale sqrt(abar) so the last timestep has zero SNR, keeping the first.

    Then the terminal abar is set to a tiny positive value exactly as the WebUI does, so sigma stays finite.
    """
    sqrt_abar = alphas_cumprod.sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    abar[-1] = ZERO_SNR_TERMINAL_ALPHA_BAR
    return abar


def sigma_to_t(log_sigmas: Tensor, sigma: Tensor) -> Tensor:
    """Fractional timestep of ``sigma`` by linear interpolation in log-sigma (k-diffusion DiscreteSchedule).

    ``log_sigmas`` is ascending; below sigma_min the result is 0, above sigma_max it is the last index.
    """
    flat = sigma.reshape(-1) if sigma.ndim != 1 else sigma
    log_sigma = flat.log()
    low_idx = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp_(0, log_sigmas.shape[0] - 2)
    low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
    t = low_idx + ((low - log_sigma) / (low - high)).clamp_(0, 1)
    return t if sigma.ndim == 1 else t.view(sigma.shape)


def t_to_sigma(log_sigmas: Tensor, t: Tensor) -> Tensor:
    """Sigma at fractional timestep ``t`` (inverse of :func:`sigma_to_t`)."""
    t = t.float()
    low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
    log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
    return log_sigma.exp()


@dataclass
class NoiseSchedule:
    """A discrete DDPM schedule. ``alphas_cumprod`` is float64 on CPU; ``sigmas`` ascending (float32)."""

    alphas_cumprod: Tensor
    prediction_type: str = "epsilon"
    sigmas: Tensor = field(init=False, repr=False)
    log_sigmas: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise InvalidParameterError(
                "prediction_type",
                f"unknown prediction type {self.prediction_type!r}",
                hint=f"use one of {', '.join(PREDICTION_TYPES)}",
            )
        self.alphas_cumprod = self.alphas_cumprod.detach().to("cpu", torch.float64)
        abar32 = self.alphas_cumprod.float()
        self.sigmas = ((1 - abar32) / abar32) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_config(
        cls,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        zero_terminal_snr: bool = False,
        prediction_type: str = "epsilon",
    ) -> NoiseSchedule:
        betas = make_betas(beta_start, beta_end, num_train_timesteps, beta_schedule)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        return cls(alphas_cumprod=alphas_cumprod, prediction_type=prediction_type)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return sigma_to_t(self.log_sigmas, torch.as_tensor(sigma, dtype=torch.float32))

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return t_to_sigma(self.log_sigmas, torch.as_tensor(t))

    def get_sigmas(self, n: int) -> Tensor:
        """n sigmas evenly spaced in timestep from the last to the first, plus a final 0 (k-diffusion)."""
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n)
        return torch.cat([self.t_to_sigma(t), torch.zeros(1)])

    def __len__(self) -> int:
        return len(self.sigmas)
