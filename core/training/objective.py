"""The denoising objective every Kiln trainer shares: noised latents, the prediction target, and
the per-sample loss weights. Pure functions of tensors, so the LoRA loop, Textual Inversion,
hypernetworks, DreamBooth and the built-in model's recipe compute the same thing the same way.

``abar`` is ᾱ_t (the schedule's cumulative alpha product) at each sample's timestep, shaped to
broadcast over the latents, e.g. ``(N, 1, 1, 1)``.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


def noised(latents: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ·x₀ + √(1−ᾱ)·ε: the forward process at the sampled timesteps."""
    return abar.sqrt() * latents + (1 - abar).sqrt() * noise


def prediction_target(latents: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor,
                      prediction_type: str) -> torch.Tensor:
    """What the U-Net should output: ε, or v = √ᾱ·ε − √(1−ᾱ)·x₀ for a v-prediction model."""
    if prediction_type == "v_prediction":
        return abar.sqrt() * noise - (1 - abar).sqrt() * latents
    if prediction_type != "epsilon":
        raise ValueError(f"prediction type {prediction_type!r} is not one of {PREDICTION_TYPES}")
    return noise


def signal_to_noise(abar: torch.Tensor) -> torch.Tensor:
    """SNR = ᾱ / (1 − ᾱ), per sample (flattened)."""
    abar = abar.flatten().float()
    return abar / (1 - abar).clamp_min(1e-8)


def min_snr_weights(abar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """kohya's ``min_snr_gamma`` (Hang et al. 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v."""
    snr = signal_to_noise(abar)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def truncated_snr_weights(abar: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(1, γ/(SNR + 1)): the built-in model's variant, which never gives a step weight 0 (kohya's
    v-prediction weights zero the pure-noise step of a zero-terminal-SNR schedule)."""
    snr_plus_one = 1.0 / (1.0 - abar).clamp_min(1e-8)
    return (gamma / snr_plus_one).clamp(max=1.0)


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample, in float32 (a half-precision forward still averages in float)."""
    error = prediction.float() - target.float()
    return error.square().mean(dim=tuple(range(1, error.ndim)))
