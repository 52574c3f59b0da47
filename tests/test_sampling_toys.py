"""An analytic toy model for the sampling tests, and checks that it is what it claims to be.

Data: every latent element is N(mu, s^2) with mu read from the conditioning ("context" mean), so the
ideal denoiser is closed-form: D(x, sigma) = (x s^2 + mu sigma^2) / (s^2 + sigma^2). ``ToyModel`` is the
discrete-timestep network that outputs the eps (or v) matching that denoiser, the way a UNet would.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.sampling.cfg import StepConditioning
from core.sampling.denoiser import DiscreteDenoiser, append_dims
from core.sampling.schedule import NoiseSchedule

DATA_STD = 0.5


def ideal_denoised(x: Tensor, sigma: Tensor, mu: Tensor) -> Tensor:
    s2 = DATA_STD**2
    sig = append_dims(sigma, x.ndim)
    return (x * s2 + append_dims(mu, x.ndim) * sig**2) / (s2 + sig**2)


class ToyModel:
    """model_fn(x_in, t, context=...) -> eps or v of the Gaussian toy data; counts its calls."""

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule
        self.calls = 0
        self.batch_sizes: list[int] = []

    def __call__(self, x_in: Tensor, t: Tensor, context: Tensor | None = None, **_: Tensor) -> Tensor:
        self.calls += 1
        self.batch_sizes.append(x_in.shape[0])
        sigma = self.schedule.t_to_sigma(t.cpu()).to(x_in.device).float()
        alpha = append_dims((sigma**2 + 1) ** -0.5, x_in.ndim)
        x_k = x_in / alpha
        mu = context.float().mean(dim=(1, 2)) if context is not None else torch.zeros(x_in.shape[0])
        x0 = ideal_denoised(x_k, sigma, mu)
        eps = (x_k - x0) / append_dims(sigma, x_in.ndim)
        if self.schedule.prediction_type == "v_prediction":
            return alpha * eps - (append_dims(sigma, x_in.ndim) * alpha) * x0
        return eps


def context(value: float, batch: int = 2, tokens: int = 77, dim: int = 8) -> Tensor:
    return torch.full((batch, tokens, dim), float(value))


def constant_conditioning(mu: float = 0.3, uncond_mu: float = 0.0, batch: int = 2) -> StepConditioning:
    return StepConditioning(conds=[({"context": context(mu, batch)}, 1.0)], uncond={"context": context(uncond_mu, batch)})


def test_toy_model_reproduces_the_ideal_denoiser_eps_and_v():
    for prediction in ("epsilon", "v_prediction"):
        schedule = NoiseSchedule.from_config(prediction_type=prediction)
        denoiser = DiscreteDenoiser(ToyModel(schedule), schedule)
        x = torch.randn(2, 4, 3, 3) * 5
        sigma = torch.tensor([3.0, 0.7])
        got = denoiser(x, sigma, context=context(0.25))
        want = ideal_denoised(x, sigma, torch.full((2,), 0.25))
        assert torch.allclose(got, want, atol=1e-4), prediction


def test_ode_endpoint_of_the_toy_is_known():
    """x(0) = mu + (x_T - mu) * s / sqrt(s^2 + sigma_T^2): the probability-flow ODE of a Gaussian."""
    sigma_t, mu = 10.0, 0.3
    x_t = torch.tensor([2.0])
    expected = mu + (x_t - mu) * DATA_STD / math.sqrt(DATA_STD**2 + sigma_t**2)
    # d x / d sigma = (x - D) / sigma, integrated finely by hand
    sigmas = torch.linspace(sigma_t, 1e-4, 20001)
    x = x_t.clone()
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        d = (x - ideal_denoised(x, a.reshape(1), torch.tensor([mu]))) / a
        x = x + d * (b - a)
    assert torch.allclose(x, expected, atol=1e-3)
