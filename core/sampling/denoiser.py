"""Turn a discrete-timestep model (eps or v output) into a k-diffusion denoiser D(x, sigma) -> x0.

The samplers work on x = x0 + sigma * eps ("k-space"); the UNet was trained on the VP form
x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, which is k-space x times c_in = 1 / sqrt(sigma^2 + 1).
This is k-diffusion's CompVisDenoiser (eps) and CompVisVDenoiser (v, sigma_data = 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from core.sampling.schedule import NoiseSchedule, sigma_to_t

# model_fn(x_in, t, **cond) -> raw model output (eps or v), all batched on dim 0; t is a float tensor [B].
ModelFn = Callable[..., Tensor]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    return v[(...,) + (None,) * (ndim - v.ndim)]


class DiscreteDenoiser:
    """``denoised = D(x, sigma, **cond)`` for a model trained on a discrete schedule."""

    def __init__(self, model_fn: ModelFn, schedule: NoiseSchedule, prediction_type: str | None = None):
        self.model_fn = model_fn
        self.schedule = schedule
        self.prediction_type = prediction_type or schedule.prediction_type
        self._log_sigmas_on: dict[torch.device, Tensor] = {}

    def log_sigmas(self, device: torch.device) -> Tensor:
        # The sigma->t interpolation runs where sigma lives so the step never waits on a host copy.
        if device not in self._log_sigmas_on:
            self._log_sigmas_on[device] = self.schedule.log_sigmas.to(device)
        return self._log_sigmas_on[device]

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return sigma_to_t(self.log_sigmas(sigma.device), sigma.float())

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        sigma = sigma.float()
        s = append_dims(sigma, x.ndim)
        c_in = torch.rsqrt(s * s + 1)
        out = self.model_fn(x * c_in, self.sigma_to_t(sigma), **cond)
        if self.prediction_type == "v_prediction":
            # c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1)
            return x * (c_in * c_in) - out * (s * c_in)
        return x - out * s
