"""LCM (latent consistency model) sampling as the WebUI 1.10 does it (modules/sd_samplers_lcm.py).

An LCM (or an LCM-LoRA) was distilled on 50 of the 1000 timesteps (t = 19, 39, ..., 999). Its schedule
keeps those 50 sigmas; a sigma maps to the nearest of them (quantised), and the output goes through the
consistency-model boundary scaling (sigma_data 0.5, timestep * 10) before each jump.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.sampling.denoiser import ModelFn, append_dims
from core.sampling.k_samplers import _prepare, _report, sigma_batch
from core.sampling.schedule import NoiseSchedule
from core.sampling.schedule import t_to_sigma as interp_t_to_sigma

ORIGINAL_STEPS = 50
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0


class LCMSchedule:
    """The 50-entry LCM sigma table with the WebUI's quantised sigma <-> timestep mapping."""

    def __init__(self, base: NoiseSchedule, original_steps: int = ORIGINAL_STEPS):
        total = len(base)
        self.base = base
        self.prediction_type = base.prediction_type
        self.skip_steps = total // original_steps
        picked = [total - 1 - k * self.skip_steps for k in range(original_steps)][::-1]
        abar = base.alphas_cumprod.float()[torch.tensor(picked)]
        self.sigmas = ((1 - abar) / abar) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Training timestep of the nearest table sigma (integer valued)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigmas = self.log_sigmas.to(sigma.device)
        nearest = (sigma.log() - log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
        return nearest * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        index = torch.clamp(((t - (self.skip_steps - 1)) / self.skip_steps).float(), min=0, max=len(self.sigmas) - 1)
        return interp_t_to_sigma(self.log_sigmas.to(index.device), index)

    def get_sigmas(self, n: int) -> Tensor:
        start = self.sigma_to_t(torch.tensor(self.sigma_max))
        end = self.sigma_to_t(torch.tensor(self.sigma_min))
        t = torch.linspace(float(start), float(end), n)
        return torch.cat([self.t_to_sigma(t), torch.zeros(1)])

    def __len__(self) -> int:
        return len(self.sigmas)


class LCMDenoiser:
    """D(x, sigma) of an LCM: quantised timestep, then c_skip/c_out boundary scaling of the x0 estimate.

    The WebUI always reads the model output as eps; Kiln converts v-prediction output properly.
    """

    def __init__(self, model_fn: ModelFn, schedule: LCMSchedule):
        self.model_fn = model_fn
        self.schedule = schedule

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        sigma = sigma.float()
        s = append_dims(sigma, x.ndim)
        c_in = (s * s + 1) ** -0.5
        t = self.schedule.sigma_to_t(sigma)
        out = self.model_fn(x * c_in, t.float(), **cond)
        if self.schedule.prediction_type == "v_prediction":
            x0 = x * (c_in * c_in) - out * (s * c_in)
        else:
            x0 = x - out * s
        scaled_t = append_dims(t.float(), x.ndim) * LCM_TIMESTEP_SCALING
        c_skip = LCM_SIGMA_DATA**2 / (scaled_t**2 + LCM_SIGMA_DATA**2)
        c_out = scaled_t / (scaled_t**2 + LCM_SIGMA_DATA**2) ** 0.5
        return c_out * x0 + c_skip * x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Jump to the consistency estimate each step, then re-noise to the next sigma."""
    sig, extra, noise = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = model(x, sigma_batch(x, sig[i]), **extra)
        _report(callback, x, i, sig[i], sig[i], denoised)
        x = denoised
        if sig[i + 1] > 0:
            x = x + noise(sig[i], sig[i + 1]) * sig[i + 1]
    return x
