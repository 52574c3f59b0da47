"""Noise schedule, sigma <-> timestep conversion and the Schedule types."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import InvalidParameterError
from core.sampling.lcm import LCMSchedule
from core.sampling.schedule import ZERO_SNR_TERMINAL_ALPHA_BAR, NoiseSchedule
from core.sampling.schedulers import AYS_SD15, AYS_SDXL, SCHEDULERS, find_scheduler, get_sigmas

SD = NoiseSchedule.from_config()


def test_sd_schedule_matches_the_known_sigma_range():
    assert SD.alphas_cumprod.dtype == torch.float64 and len(SD.alphas_cumprod) == 1000
    assert SD.sigma_min == pytest.approx(0.0292, abs=1e-4)
    assert SD.sigma_max == pytest.approx(14.6146, abs=1e-4)
    assert torch.all(SD.sigmas[1:] > SD.sigmas[:-1])


def test_zero_terminal_snr_keeps_first_and_pins_last_alpha_bar():
    zsnr = NoiseSchedule.from_config(zero_terminal_snr=True, prediction_type="v_prediction")
    assert float(zsnr.alphas_cumprod[-1]) == ZERO_SNR_TERMINAL_ALPHA_BAR
    assert float(zsnr.alphas_cumprod[0]) == pytest.approx(float(SD.alphas_cumprod[0]), rel=1e-12)
    assert math.isfinite(zsnr.sigma_max) and zsnr.sigma_max > 4000
    # the rescale is linear in sqrt(abar): the penultimate entry sits between the old ones
    assert torch.all(zsnr.alphas_cumprod[1:] < zsnr.alphas_cumprod[:-1])


def test_bad_configs_are_refused_with_the_field_named():
    with pytest.raises(InvalidParameterError, match="prediction_type"):
        NoiseSchedule.from_config(prediction_type="sample")
    with pytest.raises(InvalidParameterError, match="beta_schedule"):
        NoiseSchedule.from_config(beta_schedule="cosine")


def test_sigma_to_t_and_back_interpolate_in_log_sigma():
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    assert torch.allclose(SD.sigma_to_t(SD.t_to_sigma(t)), t, atol=1e-3)
    mid = SD.t_to_sigma(torch.tensor([10.5]))
    assert float(mid) == pytest.approx(math.sqrt(float(SD.sigmas[10]) * float(SD.sigmas[11])), rel=1e-5)


def test_karras_matches_closed_form():
    sigmas = get_sigmas("Karras", 10, SD)
    rho = 7.0
    lo, hi = SD.sigma_min, SD.sigma_max
    for i in range(10):
        r = i / 9
        expected = (hi ** (1 / rho) + r * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        assert float(sigmas[i]) == pytest.approx(expected, rel=1e-5)
    assert float(sigmas[-1]) == 0.0 and len(sigmas) == 11


def test_exponential_matches_closed_form():
    sigmas = get_sigmas("Exponential", 8, SD)
    lo, hi = SD.sigma_min, SD.sigma_max
    for i in range(8):
        expected = math.exp(math.log(hi) + i / 7 * (math.log(lo) - math.log(hi)))
        assert float(sigmas[i]) == pytest.approx(expected, rel=1e-5)
    assert float(sigmas[-1]) == 0.0


def test_polyexponential_with_rho_1_is_exponential():
    assert torch.allclose(get_sigmas("Polyexponential", 8, SD), get_sigmas("Exponential", 8, SD), rtol=1e-5)


def test_uniform_and_automatic_without_default_cover_the_whole_table():
    sigmas = get_sigmas("Uniform", 5, SD)
    assert float(sigmas[0]) == pytest.approx(SD.sigma_max, rel=1e-6)
    assert float(sigmas[-2]) == pytest.approx(SD.sigma_min, rel=1e-6)
    assert torch.equal(sigmas, get_sigmas("Automatic", 5, SD))
    assert torch.equal(get_sigmas("Automatic", 5, SD, default_scheduler="karras"), get_sigmas("Karras", 5, SD))


def test_align_your_steps_uses_the_tables():
    assert get_sigmas("Align Your Steps", 11, SD).tolist()[:-1] == pytest.approx(AYS_SD15, rel=1e-6)
    assert get_sigmas("Align Your Steps", 11, SD, is_sdxl=True).tolist()[:-1] == pytest.approx(AYS_SDXL, rel=1e-6)
    twenty = get_sigmas("Align Your Steps", 20, SD)
    assert len(twenty) == 21 and float(twenty[0]) == pytest.approx(14.615, rel=1e-6)
    assert float(twenty[-2]) == pytest.approx(0.029, rel=1e-6)


def test_kl_optimal_ends_at_sigma_min_like_the_webui():
    sigmas = get_sigmas("KL Optimal", 6, SD)
    assert len(sigmas) == 7
    assert float(sigmas[-1]) == pytest.approx(SD.sigma_min, rel=1e-5)
    mid = math.tan(0.5 * math.atan(SD.sigma_min) + 0.5 * math.atan(SD.sigma_max))
    assert float(get_sigmas("KL Optimal", 2, SD)[1]) == pytest.approx(mid, rel=1e-5)


def test_ddim_schedule_strides_the_table_and_may_add_a_step():
    sigmas = get_sigmas("DDIM", 20, SD)
    assert len(sigmas) == 21 and float(sigmas[0]) == pytest.approx(float(SD.sigmas[951]))
    assert len(get_sigmas("DDIM", 30, SD)) == 32  # 1, 34, ..., 991: 31 sigmas + 0, as in the WebUI


def test_simple_normal_sgm_beta_shapes_and_ends():
    for name in ("Simple", "Normal", "SGM Uniform", "Beta"):
        sigmas = get_sigmas(name, 7, SD)
        assert len(sigmas) == 8, name
        assert float(sigmas[-1]) == 0.0
        assert torch.all(sigmas[:-2] > sigmas[1:-1]), name
    assert float(get_sigmas("Beta", 7, SD)[0]) == pytest.approx(SD.sigma_max, rel=1e-5)
    assert float(get_sigmas("Normal", 7, SD)[-2]) == pytest.approx(SD.sigma_min, rel=1e-4)


def test_discard_penultimate_computes_one_more_and_drops_it():
    plain = get_sigmas("Karras", 6, SD)
    discarded = get_sigmas("Karras", 5, SD, discard_penultimate=True)
    assert len(discarded) == 6
    assert torch.equal(discarded[:-1], plain[:-2]) and float(discarded[-1]) == 0.0


def test_overrides_and_lookup():
    sigmas = get_sigmas("Karras", 4, SD, sigma_min=0.1, sigma_max=10.0)
    assert float(sigmas[0]) == pytest.approx(10.0) and float(sigmas[-2]) == pytest.approx(0.1)
    assert find_scheduler("SGMUniform") is find_scheduler("sgm_uniform") is find_scheduler("SGM Uniform")
    assert [s.label for s in SCHEDULERS] == ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential",
                                             "SGM Uniform", "KL Optimal", "Align Your Steps", "Simple", "Normal",
                                             "DDIM", "Beta"]
    with pytest.raises(InvalidParameterError, match="scheduler"):
        get_sigmas("Cosine", 4, SD)


def test_lcm_schedule_keeps_fifty_distilled_timesteps():
    lcm = LCMSchedule(SD)
    assert len(lcm) == 50
    assert lcm.sigma_max == pytest.approx(SD.sigma_max) and lcm.sigma_min == pytest.approx(float(SD.sigmas[19]))
    assert int(lcm.sigma_to_t(torch.tensor(SD.sigma_max))) == 999
    assert int(lcm.sigma_to_t(torch.tensor(float(SD.sigmas[500])))) in (499, 519)
    sigmas = lcm.get_sigmas(4)
    assert float(sigmas[0]) == pytest.approx(SD.sigma_max, rel=1e-5) and float(sigmas[-1]) == 0.0
