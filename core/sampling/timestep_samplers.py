"""DDIM, PLMS and UniPC as the WebUI 1.10 runs them (sd_samplers_timesteps*.py, bundled uni_pc), in k-space.

The WebUI runs these on VP latents x_t = sqrt(abar) x0 + sqrt(1 - abar) eps over integer timesteps. Kiln
runs the same update rules on k-space x = x_t / sqrt(abar) with sigma = sqrt((1 - abar) / abar), through
the same CFG denoiser as every other sampler (CFG on eps and CFG on x0 are the same affine combination).

Their sigma lists come from the WebUI's timestep rules (``ddim_timestep_sigmas``,
``unipc_sigmas``), not from a Schedule type, and do not end with 0: like the WebUI, DDIM/PLMS stop at
timestep 1 and UniPC at timestep 0, and the sampler returns the VP latent there, which is what the WebUI
decodes. Quirks kept on purpose: DDIM/PLMS make len(timesteps) - 1 model calls (19 for 20 steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.sampling.k_samplers import _report, sigma_batch
from core.sampling.schedule import NoiseSchedule


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The WebUI's "uniform" DDIM discretisation: 1, 1+c, 1+2c, ... with c = 1000 // steps (ascending)."""
    stride = num_train_timesteps // steps
    return [min(max(t + 1, 0), num_train_timesteps - 1) for t in range(0, num_train_timesteps, stride)]


def ddim_timestep_sigmas(steps: int, schedule: NoiseSchedule) -> Tensor:
    """Descending sigmas of the DDIM/PLMS timesteps (no final 0)."""
    ts = ddim_timesteps(steps, len(schedule))
    return schedule.sigmas[torch.tensor(ts[::-1])].clone()


def unipc_log_alpha(t_continuous: Tensor, schedule: NoiseSchedule) -> Tensor:
    """UniPC's discrete NoiseScheduleVP: log(sqrt(abar)) interpolated linearly in t over (i+1)/N."""
    n = len(schedule)
    log_alphas = 0.5 * torch.log(schedule.alphas_cumprod.float().double())
    t_array = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)[1:]
    return torch.from_numpy(np.interp(t_continuous.double().numpy(), t_array.numpy(), log_alphas.numpy()))


UNIPC_VARIANTS = ("bh1", "bh2")  # the WebUI's third, "vary_coeff", is not implemented
UNIPC_SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


@dataclass(frozen=True)
class UniPCOptions:
    """The WebUI's uni_pc_* settings (defaults are its defaults)."""

    variant: str = "bh1"
    skip_type: str = "time_uniform"
    order: int = 3
    lower_order_final: bool = True

    @classmethod
    def from_options(cls, options: Any) -> UniPCOptions:
        return cls(variant=options.uni_pc_variant, skip_type=options.uni_pc_skip_type,
                   order=int(options.uni_pc_order), lower_order_final=bool(options.uni_pc_lower_order_final))

    def sampler_kwargs(self) -> dict[str, Any]:
        return {"variant": self.variant, "order": self.order, "lower_order_final": self.lower_order_final}

    def infotext(self) -> dict[str, object]:
        """The WebUI's keys for the settings that differ from their defaults."""
        default = UniPCOptions()
        names = {"variant": "UniPC variant", "skip_type": "UniPC skip type", "order": "UniPC order",
                 "lower_order_final": "UniPC lower order final"}
        return {label: getattr(self, key) for key, label in names.items() if getattr(self, key) != getattr(default, key)}


def _sigma_k(log_alpha: Tensor) -> Tensor:
    # sigma_k = sigma_vp / alpha = sqrt(1 - alpha^2) / alpha
    return torch.sqrt(-torch.expm1(2 * log_alpha)) / torch.exp(log_alpha)


def unipc_sigmas(steps: int, schedule: NoiseSchedule, t_start: float | None = None,
                 skip_type: str = "time_uniform") -> Tensor:
    """Sigmas of UniPC's grid from t_start (default 1) to 1/N, steps + 1 points: even in t
    ("time_uniform"), in sqrt(t) ("time_quadratic") or in log-SNR ("logSNR"), as UniPC's
    get_time_steps."""
    n = len(schedule)
    t_T, t_0 = (1.0 if t_start is None else t_start), 1.0 / n
    if skip_type == "logSNR":
        # lambda = log(alpha / sigma_vp) = -log(sigma_k): evenly spaced lambdas are geometric sigmas.
        ends = _sigma_k(unipc_log_alpha(torch.tensor([t_T, t_0], dtype=torch.float64), schedule))
        return torch.exp(torch.linspace(float(torch.log(ends[0])), float(torch.log(ends[1])), steps + 1)).float()
    if skip_type == "time_quadratic":
        t = torch.linspace(t_T ** 0.5, t_0 ** 0.5, steps + 1, dtype=torch.float64) ** 2
    elif skip_type == "time_uniform":
        t = torch.linspace(t_T, t_0, steps + 1)
    else:
        raise ValueError(f"unknown UniPC skip type {skip_type!r} (one of {', '.join(UNIPC_SKIP_TYPES)})")
    return _sigma_k(unipc_log_alpha(t, schedule)).float()


def _alpha_bar(sigma: float) -> float:
    return 1.0 / (1.0 + sigma * sigma)


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=0.0):
    """DDIM (Song et al.) with the WebUI's eta ("Eta DDIM", default 0)."""
    extra = {} if extra_args is None else extra_args
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        s, s_prev = sig[i], sig[i + 1]
        denoised = model(x, sigma_batch(x, s), **extra)
        eps = (x - denoised) / s
        a_t, a_prev = _alpha_bar(s), _alpha_bar(s_prev)
        sigma_eta = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        # VP update a_prev^.5 x0 + (1 - a_prev - sigma_eta^2)^.5 eps + sigma_eta z, divided by a_prev^.5
        x = denoised + eps * math.sqrt((1 - a_prev - sigma_eta**2) / a_prev)
        if sigma_eta > 0:
            noise = noise_sampler(s, s_prev) if noise_sampler is not None else torch.randn_like(x)
            x = x + noise * (sigma_eta / math.sqrt(a_prev))
        _report(callback, x, i, s, s, denoised)
    return x * math.sqrt(_alpha_bar(sig[-1]))


CFGPP_SCALE_DIVISOR = 12.5  # CFG++ maps the usual CFG range [0, 12.5] onto its [0, 1]


@torch.no_grad()
def sample_ddim_cfgpp(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=0.0):
    """DDIM with CFG++ (Chung et al. 2024): guided x0, but the step direction from the unconditional eps.

    ``model`` must be a CFGDenoiser: the sampler divides its scale by 12.5 and reads the uncond output.
    """
    extra = {} if extra_args is None else extra_args
    sig = [float(s) for s in sigmas]
    saved = model.scale_multiplier, model.keep_uncond
    model.scale_multiplier, model.keep_uncond = 1.0 / CFGPP_SCALE_DIVISOR, True
    try:
        for i in range(len(sig) - 1):
            s, s_prev = sig[i], sig[i + 1]
            denoised = model(x, sigma_batch(x, s), **extra)
            eps_uncond = (x - model.last_uncond_denoised) / s
            a_t, a_prev = _alpha_bar(s), _alpha_bar(s_prev)
            sigma_eta = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x = denoised + eps_uncond * math.sqrt((1 - a_prev - sigma_eta**2) / a_prev)
            if sigma_eta > 0:
                noise = noise_sampler(s, s_prev) if noise_sampler is not None else torch.randn_like(x)
                x = x + noise * (sigma_eta / math.sqrt(a_prev))
            _report(callback, x, i, s, s, denoised)
    finally:
        model.scale_multiplier, model.keep_uncond = saved
    return x * math.sqrt(_alpha_bar(sig[-1]))


@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Pseudo linear multistep (Liu et al.): improved Euler first, then Adams-Bashforth on eps up to 4th order."""
    extra = {} if extra_args is None else extra_args
    sig = [float(s) for s in sigmas]
    old_eps: list[Tensor] = []
    for i in range(len(sig) - 1):
        s, s_prev = sig[i], sig[i + 1]
        e_t = (x - model(x, sigma_batch(x, s), **extra)) / s
        if not old_eps:
            x_prev = x + (s_prev - s) * e_t
            e_t_next = (x_prev - model(x_prev, sigma_batch(x, s_prev), **extra)) / s_prev
            e_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        pred_x0 = x - s * e_prime
        x = pred_x0 + s_prev * e_prime
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        _report(callback, x, i, s, s, pred_x0)
    return x * math.sqrt(_alpha_bar(sig[-1]))


class _UniPCState:
    """VP quantities of one grid point: alpha_t, sigma_t and lambda_t = log(alpha/sigma) = -log(sigma_k)."""

    def __init__(self, sigma_k: float):
        self.sigma_k = sigma_k
        self.alpha = 1.0 / math.sqrt(1.0 + sigma_k * sigma_k)
        self.sigma = sigma_k * self.alpha
        self.lam = -math.log(sigma_k)


def _unipc_coefficients(rks: list[float], hh: float, order: int, b_h: float
                        ) -> tuple[np.ndarray, np.ndarray, float]:
    """R matrix, b vector and phi_1(h)·h of UniPC, for the variant's B(h) (bh1: h, bh2: e^h - 1)."""
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.array(rows, dtype=np.float64), np.array(b, dtype=np.float64), h_phi_1


def _unipc_update(model_x0, x, prev_x0: list[Tensor], prev: list[_UniPCState], cur: _UniPCState, order: int,
                  use_corrector: bool, variant: str = "bh1") -> tuple[Tensor, Tensor | None]:
    """One multistep UniPC-bh predictor (+ corrector) step in data-prediction form."""
    last, m0 = prev[-1], prev_x0[-1]
    h = cur.lam - last.lam
    rks, d1s = [], []
    for i in range(1, order):
        rk = (prev[-(i + 1)].lam - last.lam) / h
        rks.append(rk)
        d1s.append((prev_x0[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)  # bh2
    big_r, b, h_phi_1 = _unipc_coefficients(rks, hh, order, b_h)
    x_t_ = (cur.sigma / last.sigma) * x - (cur.alpha * h_phi_1) * m0
    pred_res = 0
    if d1s:
        rhos_p = [0.5] if order == 2 else np.linalg.solve(big_r[:-1, :-1], b[:-1]).tolist()
        pred_res = sum(float(r) * d for r, d in zip(rhos_p, d1s))
    x_t = x_t_ - (cur.alpha * b_h) * pred_res
    if not use_corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else np.linalg.solve(big_r, b).tolist()
    model_t = model_x0(x_t, cur)
    corr_res = sum(float(r) * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
    x_t = x_t_ - (cur.alpha * b_h) * (corr_res + float(rhos_c[-1]) * (model_t - m0))
    return x_t, model_t


@torch.no_grad()
def sample_unipc(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order=3,
                 lower_order_final=True, variant="bh1"):
    """UniPC multistep (variant bh1 or bh2), data prediction, corrector on all but the last step
    (the WebUI's defaults: bh1, order 3, lower order final)."""
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r} (one of {', '.join(UNIPC_VARIANTS)})")
    extra = {} if extra_args is None else extra_args
    grid = [_UniPCState(float(s)) for s in sigmas]
    steps = len(grid) - 1
    order = max(1, min(order, steps))

    def model_x0(x_vp: Tensor, state: _UniPCState) -> Tensor:
        return model(x_vp / state.alpha, sigma_batch(x_vp, state.sigma_k), **extra)

    x = x * grid[0].alpha
    prev_x0, prev = [model_x0(x, grid[0])], [grid[0]]
    for step in range(1, steps + 1):
        if step < order:
            step_order, use_corrector = step, True
        else:
            step_order = min(order, steps + 1 - step) if lower_order_final else order
            use_corrector = step != steps
        x, model_x = _unipc_update(model_x0, x, prev_x0, prev, grid[step], step_order, use_corrector, variant)
        _report(callback, x / grid[step].alpha, step - 1, grid[step - 1].sigma_k, grid[step - 1].sigma_k,
                model_x if model_x is not None else prev_x0[-1])
        if step < order:
            prev_x0.append(model_x)
            prev.append(grid[step])
        elif step < steps:
            prev_x0 = (prev_x0 + [model_x])[-order:]
            prev = (prev + [grid[step]])[-order:]
    return x
