"""DPM-Solver (Lu et al. 2022) fixed-step "DPM fast" and adaptive "DPM adaptive", k-diffusion style.

Time is t = -log(sigma). Both take the sampler's sigma list only for its range: they run from
sigmas[0] down to the last non-zero sigma (the WebUI passes the model's sigma_max/sigma_min and the step
count) and choose their own intermediate points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.sampling.k_samplers import default_noise_sampler, get_ancestral_step, sigma_batch


def _sigma(t: float) -> float:
    return math.exp(-t)


def _t(sigma: float) -> float:
    return -math.log(sigma)


class PIDStepSizeController:
    """A PID controller for ODE adaptive step size control."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    @staticmethod
    def limiter(x: float) -> float:
        return 1 + math.atan(x - 1)

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.limiter(self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


class DPMSolver:
    """First/second/third-order DPM-Solver steps on the eps parameterisation of a denoiser."""

    def __init__(self, model, extra_args=None, info_callback=None):
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.info_callback = info_callback

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: float) -> Tensor:
        if key not in cache:
            sigma = _sigma(t)
            cache[key] = (x - self.model(x, sigma_batch(x, sigma), **self.extra_args)) / sigma
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - _sigma(t_next) * math.expm1(h) * eps

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma(t_next) * math.expm1(h) * eps - _sigma(t_next) / (2 * r1) * math.expm1(h) * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - _sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - _sigma(s2) * math.expm1(r2 * h) * eps
              - _sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - _sigma(t_next) * math.expm1(h) * eps - _sigma(t_next) / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)

    def _report(self, info: dict) -> None:
        if self.info_callback is not None:
            self.info_callback(info)

    def _ancestral_target(self, s: float, t: float, t_end: float, eta: float) -> tuple[float, float]:
        if not eta:
            return t, 0.0
        sd, _ = get_ancestral_step(_sigma(s), _sigma(t), eta)
        t_ = min(t_end, _t(sd)) if sd > 0 else t_end
        return t_, (_sigma(t) ** 2 - _sigma(t_) ** 2) ** 0.5

    def fast(self, x, t_start, t_end, nfe, eta=0.0, s_noise=1.0, noise_sampler=None):
        noise = default_noise_sampler(x) if noise_sampler is None else noise_sampler
        if not t_end > t_start and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(t_start, t_end, m + 1, dtype=torch.float64).tolist()
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, order in enumerate(orders):
            cache: dict[str, Tensor] = {}
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = self._ancestral_target(t, t_next, t_end, eta)
            eps = self.eps(cache, "eps", x, t)
            self._report({"x": x, "i": i, "t": t, "t_up": t, "denoised": x - _sigma(t) * eps})
            if order == 1:
                x = self.step_1(x, t, t_next_, cache)
            elif order == 2:
                x = self.step_2(x, t, t_next_, cache)
            else:
                x = self.step_3(x, t, t_next_, cache)
            if su:
                x = x + noise(_sigma(t), _sigma(t_next)) * (su * s_noise)
        return x

    def adaptive(self, x, t_start, t_end, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0,
                 dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None):
        noise = default_noise_sampler(x) if noise_sampler is None else noise_sampler
        if order not in {2, 3}:
            raise ValueError("order should be 2 or 3")
        forward = t_end > t_start
        if not forward and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        h_init = abs(h_init) * (1 if forward else -1)
        s, x_prev = t_start, x
        pid = PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
        info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
        while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
            cache: dict[str, Tensor] = {}
            t = min(t_end, s + pid.h) if forward else max(t_end, s + pid.h)
            t_, su = self._ancestral_target(s, t, t_end, eta)
            eps = self.eps(cache, "eps", x, s)
            denoised = x - _sigma(s) * eps
            if order == 2:
                x_low = self.step_1(x, s, t_, cache)
                x_high = self.step_2(x, s, t_, cache)
            else:
                x_low = self.step_2(x, s, t_, cache, r1=1 / 3)
                x_high = self.step_3(x, s, t_, cache)
            delta = torch.clamp_min(rtol * torch.maximum(x_low.abs(), x_prev.abs()), atol)
            error = float(torch.linalg.norm((x_low - x_high) / delta)) / x.numel() ** 0.5
            if pid.propose_step(error):
                x_prev = x_low
                x = x_high
                if su:
                    x = x + noise(_sigma(s), _sigma(t)) * (su * s_noise)
                s = t
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
            info["nfe"] += order
            info["steps"] += 1
            self._report({"x": x, "i": info["steps"] - 1, "t": s, "t_up": s, "denoised": denoised,
                          "error": error, "h": pid.h, **info})
        return x, info


def _range(sigmas: Tensor) -> tuple[float, float, int]:
    values = [float(s) for s in sigmas]
    positive = [s for s in values if s > 0]
    if not positive:
        raise ValueError("sigmas must contain a non-zero sigma")
    return min(positive), max(values), len(values) - 1


def _solver(model, extra_args, callback) -> DPMSolver:
    solver = DPMSolver(model, extra_args)
    if callback is not None:
        solver.info_callback = lambda info: callback({"sigma": _sigma(info["t"]), "sigma_hat": _sigma(info["t_up"]),
                                                      **info})
    return solver


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=0.0, s_noise=1.0):
    """DPM-Solver-Fast: len(sigmas)-1 model evaluations in third-order steps from sigma_max to sigma_min."""
    sigma_min, sigma_max, n = _range(sigmas)
    solver = _solver(model, extra_args, callback)
    return solver.fast(x, _t(sigma_max), _t(sigma_min), n, eta, s_noise, noise_sampler)


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order=3, rtol=0.05,
                        atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0,
                        s_noise=1.0):
    """DPM-Solver-12/23 with PID step-size control between sigma_max and sigma_min (step count ignored)."""
    sigma_min, sigma_max, _ = _range(sigmas)
    solver = _solver(model, extra_args, callback)
    x, _ = solver.adaptive(x, _t(sigma_max), _t(sigma_min), order, rtol, atol, h_init, pcoeff, icoeff, dcoeff,
                           accept_safety, eta, s_noise, noise_sampler)
    return x
