"""Sigma schedules ("Schedule type") with the WebUI 1.10 names and math (modules/sd_schedulers.py).

Every function returns a descending float32 tensor that k-diffusion samplers consume; all but KL Optimal
end with 0 (KL Optimal ends at sigma_min, as in the WebUI). Functions that need the model's discrete
schedule take ``schedule`` (a NoiseSchedule or anything with sigmas / sigma_to_t / t_to_sigma /
get_sigmas, e.g. the LCM schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.errors import InvalidParameterError

AUTOMATIC = "Automatic"

# Align Your Steps tables (NVIDIA, "howto"): 10 steps + final sigma for SD1.5 and SDXL.
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]

DEFAULT_BETA_ALPHA = 0.6
DEFAULT_BETA_BETA = 0.6


def append_zero(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros([1])])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Evenly spaced in log sigma."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """Polynomial in log sigma (rho = 1 is Exponential)."""
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def uniform_sigmas(n: int, schedule: Any) -> Tensor:
    """Evenly spaced in timestep over the whole training range (k-diffusion get_sigmas)."""
    return schedule.get_sigmas(n)


def sgm_uniform_sigmas(n: int, sigma_min: float, sigma_max: float, schedule: Any) -> Tensor:
    """Evenly spaced in timestep, n+1 points with the last one dropped (SGM's discretization)."""
    start = schedule.sigma_to_t(torch.tensor(sigma_max))
    end = schedule.sigma_to_t(torch.tensor(sigma_min))
    ts = torch.linspace(float(start), float(end), n + 1)[:-1]
    return append_zero(torch.stack([schedule.t_to_sigma(t).reshape(()) for t in ts]).float())


def normal_sigmas(n: int, sigma_min: float, sigma_max: float, schedule: Any) -> Tensor:
    """Evenly spaced in timestep between the timesteps of sigma_max and sigma_min (both included)."""
    start = schedule.sigma_to_t(torch.tensor(sigma_max))
    end = schedule.sigma_to_t(torch.tensor(sigma_min))
    ts = torch.linspace(float(start), float(end), n)
    return append_zero(torch.stack([schedule.t_to_sigma(t).reshape(()) for t in ts]).float())


def simple_sigmas(n: int, schedule: Any) -> Tensor:
    """Every len/n-th sigma of the training table from the top (ComfyUI's "simple")."""
    table = schedule.sigmas
    stride = len(table) / n
    return append_zero(torch.tensor([float(table[-(1 + int(i * stride))]) for i in range(n)], dtype=torch.float32))


def ddim_uniform_sigmas(n: int, schedule: Any) -> Tensor:
    """Table sigmas at 1, 1+s, 1+2s, ... (s = len // n), top first; may give one more step than n."""
    table = schedule.sigmas
    stride = max(len(table) // n, 1)
    picked = [float(table[i]) for i in range(1, len(table), stride)]
    return append_zero(torch.tensor(picked[::-1], dtype=torch.float32))


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """KL-optimal schedule: evenly spaced in arctan(sigma); ends at sigma_min (no appended zero)."""
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    step = torch.arange(n + 1) / n
    return torch.tan(step * alpha_min + (1.0 - step) * alpha_max)


def loglinear_interp(values_desc: list[float], num: int) -> np.ndarray:
    """Resample a decreasing sequence to ``num`` points, linearly in log space."""
    xs = np.linspace(0, 1, len(values_desc))
    ys = np.log(values_desc[::-1])
    new_ys = np.interp(np.linspace(0, 1, num), xs, ys)
    return np.exp(new_ys)[::-1].copy()


def align_your_steps_sigmas(n: int, is_sdxl: bool = False) -> Tensor:
    table = AYS_SDXL if is_sdxl else AYS_SD15
    sigmas = list(table) if n == len(table) else list(loglinear_interp(table, n))
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def beta_sigmas(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """"Beta Sampling is All You Need" (Lee et al. 2024): timesteps at quantiles of Beta(alpha, beta)."""
    from scipy import stats  # scipy arrives with torchsde; only this schedule needs it

    quantiles = 1 - np.linspace(0, 1, n)
    fractions = [float(stats.beta.ppf(q, alpha, beta)) for q in quantiles]
    return torch.tensor([sigma_min + f * (sigma_max - sigma_min) for f in fractions] + [0.0], dtype=torch.float32)


@dataclass(frozen=True)
class SchedulerInfo:
    """One "Schedule type". ``function`` is None for Automatic (the sampler's default decides)."""

    name: str
    label: str
    function: Callable[..., Tensor] | None
    default_rho: float | None = None
    need_inner_model: bool = False
    aliases: tuple[str, ...] = ()


SCHEDULERS: list[SchedulerInfo] = [
    SchedulerInfo("automatic", AUTOMATIC, None),
    SchedulerInfo("uniform", "Uniform", uniform_sigmas, need_inner_model=True),
    SchedulerInfo("karras", "Karras", karras_sigmas, default_rho=7.0),
    SchedulerInfo("exponential", "Exponential", exponential_sigmas),
    SchedulerInfo("polyexponential", "Polyexponential", polyexponential_sigmas, default_rho=1.0),
    SchedulerInfo("sgm_uniform", "SGM Uniform", sgm_uniform_sigmas, need_inner_model=True, aliases=("SGMUniform",)),
    SchedulerInfo("kl_optimal", "KL Optimal", kl_optimal_sigmas),
    SchedulerInfo("align_your_steps", "Align Your Steps", align_your_steps_sigmas),
    SchedulerInfo("simple", "Simple", simple_sigmas, need_inner_model=True),
    SchedulerInfo("normal", "Normal", normal_sigmas, need_inner_model=True),
    SchedulerInfo("ddim", "DDIM", ddim_uniform_sigmas, need_inner_model=True),
    SchedulerInfo("beta", "Beta", beta_sigmas, need_inner_model=True),
]


def find_scheduler(name: str | None) -> SchedulerInfo | None:
    """By label ("Karras"), internal name ("karras") or alias ("SGMUniform"), like schedulers_map."""
    if not name:
        return None
    for info in SCHEDULERS:
        if name in (info.label, info.name, *info.aliases):
            return info
    return None


def scheduler_labels() -> list[str]:
    return [s.label for s in SCHEDULERS]


def discard_penultimate_sigma(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas[:-2], sigmas[-1:]])


@dataclass(frozen=True)
class ScheduleOptions:
    """The WebUI's schedule settings (sigma_min, sigma_max, rho, beta_dist_*, always discard):
    0 for a sigma or rho means the model's / the schedule's own value."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_alpha: float = DEFAULT_BETA_ALPHA
    beta_beta: float = DEFAULT_BETA_BETA
    always_discard_penultimate: bool = False

    @classmethod
    def from_options(cls, options: Any) -> ScheduleOptions:
        """From RunOptions / Options (the WebUI's option names)."""
        return cls(sigma_min=float(options.sigma_min or 0), sigma_max=float(options.sigma_max or 0),
                   rho=float(options.rho or 0), beta_alpha=float(options.beta_dist_alpha),
                   beta_beta=float(options.beta_dist_beta),
                   always_discard_penultimate=bool(options.always_discard_next_to_last_sigma))

    def sigma_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`get_sigmas` (and of plan.sampler_sigmas)."""
        return {"sigma_min": self.sigma_min or None, "sigma_max": self.sigma_max or None, "rho": self.rho or None,
                "beta_alpha": self.beta_alpha, "beta_beta": self.beta_beta}

    def infotext(self, scheduler_label: str, *, sampler_discards: bool) -> dict[str, object]:
        """The keys the WebUI's KDiffusionSampler.get_sigmas adds for the schedule ``scheduler_label``
        (already resolved from Automatic): only values that changed the schedule."""
        info = find_scheduler(scheduler_label)
        params: dict[str, object] = {}
        if info is not None and info.function is not None:
            if self.sigma_min:
                params["Schedule min sigma"] = self.sigma_min
            if self.sigma_max:
                params["Schedule max sigma"] = self.sigma_max
            if self.rho and info.default_rho is not None:
                params["Schedule rho"] = self.rho
            if info.name == "beta":
                params["Beta schedule alpha"] = self.beta_alpha
                params["Beta schedule beta"] = self.beta_beta
        if self.always_discard_penultimate and not sampler_discards:
            params["Discard penultimate sigma"] = True
        return params


def get_sigmas(
    scheduler_name: str,
    steps: int,
    schedule: Any,
    *,
    discard_penultimate: bool = False,
    default_scheduler: str | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    is_sdxl: bool = False,
    beta_alpha: float = DEFAULT_BETA_ALPHA,
    beta_beta: float = DEFAULT_BETA_BETA,
) -> Tensor:
    """Descending sigmas for ``steps`` sampling steps (KDiffusionSampler.get_sigmas of WebUI 1.10).

    "Automatic" uses ``default_scheduler`` (the sampler's) or, without one, the model's uniform sigmas.
    ``sigma_min``/``sigma_max``/``rho`` override the model's values like the WebUI settings of those names
    (ignored when None or 0). With ``discard_penultimate`` one extra step is computed and the sigma just
    before the final 0 is dropped (DPM2 and the "always discard" setting).
    """
    if steps < 1:
        raise InvalidParameterError("steps", f"must be at least 1, got {steps}")
    info = find_scheduler(scheduler_name)
    if info is None:
        raise InvalidParameterError(
            "scheduler", f"unknown schedule type {scheduler_name!r}", hint=f"use one of {', '.join(scheduler_labels())}"
        )
    if info.function is None and default_scheduler:
        info = find_scheduler(default_scheduler) or info

    n = steps + 1 if discard_penultimate else steps
    if info.function is None:
        sigmas = schedule.get_sigmas(n)
    else:
        sigmas = _call_scheduler(info, n, schedule, sigma_min, sigma_max, rho, is_sdxl, beta_alpha, beta_beta)
    sigmas = sigmas.float().cpu()
    return discard_penultimate_sigma(sigmas) if discard_penultimate else sigmas


def _call_scheduler(
    info: SchedulerInfo,
    n: int,
    schedule: Any,
    sigma_min: float | None,
    sigma_max: float | None,
    rho: float | None,
    is_sdxl: bool,
    beta_alpha: float,
    beta_beta: float,
) -> Tensor:
    lo = float(sigma_min) if sigma_min else float(schedule.sigmas[0])
    hi = float(sigma_max) if sigma_max else float(schedule.sigmas[-1])
    rho = rho or info.default_rho
    name = info.name
    if name == "uniform":
        return uniform_sigmas(n, schedule)
    if name == "karras":
        return karras_sigmas(n, lo, hi, rho)
    if name == "exponential":
        return exponential_sigmas(n, lo, hi)
    if name == "polyexponential":
        return polyexponential_sigmas(n, lo, hi, rho)
    if name == "sgm_uniform":
        return sgm_uniform_sigmas(n, lo, hi, schedule)
    if name == "kl_optimal":
        return kl_optimal_sigmas(n, lo, hi)
    if name == "align_your_steps":
        return align_your_steps_sigmas(n, is_sdxl)
    if name == "simple":
        return simple_sigmas(n, schedule)
    if name == "normal":
        return normal_sigmas(n, lo, hi, schedule)
    if name == "ddim":
        return ddim_uniform_sigmas(n, schedule)
    return beta_sigmas(n, lo, hi, beta_alpha, beta_beta)
