"""The denoising objective all trainers share (core.training.objective)."""

import pytest
import torch

from core.sampling.schedule import NoiseSchedule
from core.training.objective import (
    min_snr_weights,
    noised,
    per_sample_mse,
    prediction_target,
    signal_to_noise,
    truncated_snr_weights,
)


def _abar(n: int = 6) -> torch.Tensor:
    alphas = NoiseSchedule.from_config(zero_terminal_snr=False, prediction_type="epsilon").alphas_cumprod.float()
    return alphas[torch.linspace(0, 999, n).long()].view(-1, 1, 1, 1)


def test_v_target_recovers_the_clean_latents():
    g = torch.Generator().manual_seed(0)
    x0, noise, abar = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g), _abar()
    xt, v = noised(x0, noise, abar), prediction_target(x0, noise, abar, "v_prediction")
    # x0 = √ᾱ·x_t − √(1−ᾱ)·v and ε = √(1−ᾱ)·x_t + √ᾱ·v: what a sampler inverts.
    assert torch.allclose(abar.sqrt() * xt - (1 - abar).sqrt() * v, x0, atol=1e-5)
    assert torch.allclose((1 - abar).sqrt() * xt + abar.sqrt() * v, noise, atol=1e-5)
    assert prediction_target(x0, noise, abar, "epsilon") is noise
    with pytest.raises(ValueError, match="sample"):
        prediction_target(x0, noise, abar, "sample")


def test_min_snr_weights_are_kohyas():
    abar = _abar()
    snr = signal_to_noise(abar)
    eps, v = min_snr_weights(abar, 5.0, "epsilon"), min_snr_weights(abar, 5.0, "v_prediction")
    for i, s in enumerate(snr.tolist()):
        assert eps[i].item() == pytest.approx(min(s, 5.0) / s, rel=1e-5)
        assert v[i].item() == pytest.approx(min(s, 5.0) / (s + 1), rel=1e-5)
    assert eps[-1] == 1.0 and eps[0] < 0.01  # noisy steps keep weight 1, clean ones are damped


def test_truncated_weights_never_zero_a_step():
    abar = torch.tensor([0.0, 0.5, 0.99])  # 0: a zero-terminal-SNR schedule's pure-noise step
    weights = truncated_snr_weights(abar, 5.0)
    assert weights.tolist() == pytest.approx([1.0, 1.0, 0.05], rel=1e-4)
    assert min_snr_weights(abar, 5.0, "v_prediction")[0] == 0.0  # kohya's: the step counts for nothing


def test_per_sample_mse_is_float32_per_sample():
    a, b = torch.ones(2, 3, 4, 4, dtype=torch.float16), torch.zeros(2, 3, 4, 4, dtype=torch.float16)
    b[1] = 2
    out = per_sample_mse(a, b)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 1.0]
    b[1, 0] = 1
    assert per_sample_mse(a, b)[1].item() == pytest.approx(2 / 3)
