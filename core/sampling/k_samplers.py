"""k-diffusion samplers (Karras et al. ODE/SDE solvers and DPM-Solver++ variants), one function each.

Semantics follow k-diffusion's sampling.py as pinned by the WebUI 1.10 (and its Restart sampler).
Every function has the same shape:

    sample_x(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, ...) -> x

``model(x, sigma_batch, **extra_args)`` returns the denoised prediction; ``sigmas`` is descending and
usually ends with 0; ``x`` starts at ``noise * sigmas[0]`` (txt2img). ``noise_sampler(sigma, sigma_next)``
supplies unit-variance noise for ancestral/SDE steps (per-image seeded in Kiln, see rng.py).
``callback`` gets {'x', 'i', 'sigma', 'sigma_hat', 'denoised'} after each model evaluation of a step; it
may raise to interrupt. Scalar step math runs on Python floats so a step does not wait on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.sampling.schedulers import karras_sigmas

NoiseSampler = Callable[[float, float], Tensor]
Callback = Callable[[dict[str, Any]], None]
SQRT2_MINUS_1 = 2**0.5 - 1


def sigma_batch(x: Tensor, sigma: float) -> Tensor:
    """The per-image sigma vector the denoiser receives (float32 even when x is half)."""
    return torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """Karras ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


def default_noise_sampler(x: Tensor) -> NoiseSampler:
    return lambda sigma, sigma_next: torch.randn_like(x)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): deterministic step target and the noise to add back after it."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _prepare(x: Tensor, sigmas: Tensor, extra_args: dict | None, noise_sampler: NoiseSampler | None):
    extra = {} if extra_args is None else extra_args
    noise = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    return [float(s) for s in sigmas], extra, noise


def _report(callback: Callback | None, x: Tensor, i: int, sigma: float, sigma_hat: float, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(
    x: Tensor, sig: list[float], i: int, noise: NoiseSampler, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float
) -> tuple[Tensor, float]:
    """Algorithm 2's stochastic "churn": raise the noise level to sigma_hat before the step."""
    steps = len(sig) - 1
    gamma = min(s_churn / steps, SQRT2_MINUS_1) if s_tmin <= sig[i] <= s_tmax else 0.0
    # k-diffusion draws this noise on every step once churn is on; keep the draw order identical.
    eps = noise(sig[i], sig[i + 1]) * s_noise if s_churn > 0 else None
    sigma_hat = sig[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sig[i] ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler steps (Karras et al. 2022, Algorithm 2)."""
    sig, extra, noise = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in range(len(sig) - 1):
        x, sigma_hat = _churn(x, sig, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_batch(x, sigma_hat), **extra)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sig[i], sigma_hat, denoised)
        x = x + d * (sig[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """Euler steps to sigma_down, then fresh noise up to sigma_next."""
    sig, extra, noise = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = model(x, sigma_batch(x, sig[i]), **extra)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        _report(callback, x, i, sig[i], sig[i], denoised)
        x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        if sig[i + 1] > 0:
            x = x + noise(sig[i], sig[i + 1]) * (s_noise * sigma_up)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); Euler on the last step."""
    sig, extra, noise = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in range(len(sig) - 1):
        x, sigma_hat = _churn(x, sig, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_batch(x, sigma_hat), **extra)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sig[i], sigma_hat, denoised)
        dt = sig[i + 1] - sigma_hat
        if sig[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigma_batch(x, sig[i + 1]), **extra)
            d_2 = to_d(x_2, sig[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 style midpoint steps (midpoint at the geometric mean of the sigmas)."""
    sig, extra, noise = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in range(len(sig) - 1):
        x, sigma_hat = _churn(x, sig, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_batch(x, sigma_hat), **extra)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sig[i], sigma_hat, denoised)
        if sig[i + 1] == 0:
            x = x + d * (sig[i + 1] - sigma_hat)
        else:
            sigma_mid = math.exp((math.log(sigma_hat) + math.log(sig[i + 1])) / 2)
            x_2 = x + d * (sigma_mid - sigma_hat)
            denoised_2 = model(x_2, sigma_batch(x, sigma_mid), **extra)
            x = x + to_d(x_2, sigma_mid, denoised_2) * (sig[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM-Solver-2 steps."""
    sig, extra, noise = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = model(x, sigma_batch(x, sig[i]), **extra)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        _report(callback, x, i, sig[i], sig[i], denoised)
        d = to_d(x, sig[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sig[i])
        else:
            sigma_mid = math.exp((math.log(sig[i]) + math.log(sigma_down)) / 2)
            x_2 = x + d * (sigma_mid - sig[i])
            denoised_2 = model(x_2, sigma_batch(x, sigma_mid), **extra)
            x = x + to_d(x_2, sigma_mid, denoised_2) * (sigma_down - sig[i])
            x = x + noise(sig[i], sig[i + 1]) * (s_noise * sigma_up)
    return x


def linear_multistep_coeff(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j} (exact)."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    poly = np.array([1.0])
    for k in range(order):
        if j == k:
            continue
        poly = np.polynomial.polynomial.polymul(poly, [-t[i - k], 1.0]) / (t[i - j] - t[i - k])
    antiderivative = np.polynomial.polynomial.polyint(poly)
    return float(np.polynomial.polynomial.polyval(t[i + 1], antiderivative)
                 - np.polynomial.polynomial.polyval(t[i], antiderivative))


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order=4):
    """Linear multistep (Adams-Bashforth in sigma) over the last ``order`` derivatives."""
    sig, extra, _ = _prepare(x, sigmas, extra_args, noise_sampler)
    ds: list[Tensor] = []
    for i in range(len(sig) - 1):
        denoised = model(x, sigma_batch(x, sig[i]), **extra)
        ds.append(to_d(x, sig[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, x, i, sig[i], sig[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sig, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


def _t(sigma: float) -> float:
    return -math.log(sigma)


def _sigma(t: float) -> float:
    return math.exp(-t)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                              eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM-Solver++(2S) second-order steps."""
    sig, extra, noise = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = model(x, sigma_batch(x, sig[i]), **extra)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        _report(callback, x, i, sig[i], sig[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        else:
            t, t_next = _t(sig[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - math.expm1(-h / 2) * denoised
            denoised_2 = model(x_2, sigma_batch(x, _sigma(s)), **extra)
            x = (_sigma(t_next) / _sigma(t)) * x - math.expm1(-h) * denoised_2
        if sig[i + 1] > 0:
            x = x + noise(sig[i], sig[i + 1]) * (s_noise * sigma_up)
    return x


def _positive_range(sig: list[float]) -> tuple[float, float]:
    positive = [s for s in sig if s > 0]
    return min(positive), max(sig)


def _brownian_default(x: Tensor, sig: list[float], noise_sampler: NoiseSampler | None) -> NoiseSampler:
    if noise_sampler is not None:
        return noise_sampler
    from core.sampling.rng import BrownianTreeNoiseSampler

    sigma_min, sigma_max = _positive_range(sig)
    return BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seeds=None)


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                     eta=1.0, s_noise=1.0, r=1 / 2):
    """DPM-Solver++ (stochastic), two model evaluations per step; Brownian-tree noise by default."""
    sig = [float(s) for s in sigmas]
    noise = _brownian_default(x, sig, noise_sampler)
    extra = {} if extra_args is None else extra_args
    for i in range(len(sig) - 1):
        denoised = model(x, sigma_batch(x, sig[i]), **extra)
        _report(callback, x, i, sig[i], sig[i], denoised)
        if sig[i + 1] == 0:
            x = x + to_d(x, sig[i], denoised) * (sig[i + 1] - sig[i])
            continue
        t, t_next = _t(sig[i]), _t(sig[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = get_ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - math.expm1(t - s_) * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * (s_noise * su)
        denoised_2 = model(x_2, sigma_batch(x, _sigma(s)), **extra)
        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - math.expm1(t - t_next_) * denoised_d
        x = x + noise(_sigma(t), _sigma(t_next)) * (s_noise * su)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """DPM-Solver++(2M): second-order multistep in log-sigma, first order on the first and last step."""
    sig, extra, _ = _prepare(x, sigmas, extra_args, noise_sampler)
    old_denoised = None
    for i in range(len(sig) - 1):
        denoised = model(x, sigma_batch(x, sig[i]), **extra)
        _report(callback, x, i, sig[i], sig[i], denoised)
        if sig[i + 1] == 0:
            # exp-integrator with t_next = inf: ratio 0, expm1(-inf) = -1
            x = denoised
        else:
            t, t_next = _t(sig[i]), _t(sig[i + 1])
            h = t_next - t
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (t - _t(sig[i - 1])) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                        eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE ("midpoint" or "heun" second-order correction); denoised on the last step."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    sig = [float(s) for s in sigmas]
    noise = _brownian_default(x, sig, noise_sampler)
    extra = {} if extra_args is None else extra_args
    old_denoised, h_last = None, None
    for i in range(len(sig) - 1):
        denoised = model(x, sigma_batch(x, sig[i]), **extra)
        _report(callback, x, i, sig[i], sig[i], denoised)
        h = None
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = _t(sig[i + 1]) - _t(sig[i])
            eta_h = eta * h
            phi = -math.expm1(-h - eta_h)
            x = (sig[i + 1] / sig[i] * math.exp(-eta_h)) * x + phi * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sig[i], sig[i + 1]) * (sig[i + 1] * (-math.expm1(-2 * eta_h)) ** 0.5 * s_noise)
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE: third-order multistep with SDE noise; denoised on the last step."""
    sig = [float(s) for s in sigmas]
    noise = _brownian_default(x, sig, noise_sampler)
    extra = {} if extra_args is None else extra_args
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sig) - 1):
        denoised = model(x, sigma_batch(x, sig[i]), **extra)
        _report(callback, x, i, sig[i], sig[i], denoised)
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = _t(sig[i + 1]) - _t(sig[i])
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                x = x + noise(sig[i], sig[i + 1]) * (sig[i + 1] * (-math.expm1(-2 * h * eta)) ** 0.5 * s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _restart_plan(sig: list[float]) -> tuple[list[float], list[tuple[float, float]]]:
    """The WebUI's automatic restart list: from 20 steps on, re-noise from sigma ~0.1 back up to ~2."""
    steps = len(sig) - 1
    restart: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = 9, 1
        if steps >= 36:
            restart_steps, restart_times = steps // 4, 2
        sig = karras_sigmas(steps - restart_steps * restart_times, sig[-2], sig[0]).tolist()
        restart = {0.1: (restart_steps + 1, restart_times, 2.0)}

    def nearest(value: float) -> int:
        return min(range(len(sig)), key=lambda k: abs(sig[k] - value))

    by_index = {nearest(key): value for key, value in restart.items()}
    step_list: list[tuple[float, float]] = []
    for i in range(len(sig) - 1):
        step_list.append((sig[i], sig[i + 1]))
        if i + 1 in by_index:
            restart_steps, restart_times, restart_max = by_index[i + 1]
            min_idx, max_idx = i + 1, nearest(restart_max)
            if max_idx < min_idx:
                sigma_restart = karras_sigmas(restart_steps, sig[min_idx], sig[max_idx])[:-1].tolist()
                for _ in range(restart_times):
                    step_list.extend(zip(sigma_restart[:-1], sigma_restart[1:]))
    return sig, step_list


@torch.no_grad()
def sample_restart(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_noise=1.0):
    """Restart sampling (Xu et al. 2023) with Heun steps, as the WebUI's sd_samplers_extra."""
    sig, extra, noise = _prepare(x, sigmas, extra_args, noise_sampler)
    _, step_list = _restart_plan(sig)
    last_sigma = None
    for step_id, (old_sigma, new_sigma) in enumerate(step_list):
        if last_sigma is not None and last_sigma < old_sigma:
            x = x + noise(last_sigma, old_sigma) * (s_noise * (old_sigma**2 - last_sigma**2) ** 0.5)
        denoised = model(x, sigma_batch(x, old_sigma), **extra)
        d = to_d(x, old_sigma, denoised)
        _report(callback, x, step_id, new_sigma, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigma_batch(x, new_sigma), **extra)
            x = x + (d + to_d(x_2, new_sigma, denoised_2)) / 2 * dt
        last_sigma = new_sigma
    return x
