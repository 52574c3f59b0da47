"""Every sampler on every schedule that applies to it, on the analytic toy model; sampler table lookups."""

from __future__ import annotations

import math

import pytest
import torch

from core.sampling.cfg import CFGDenoiser
from core.sampling.k_samplers import sample_euler, sample_heun
from core.sampling.plan import (
    img2img_plan,
    make_denoiser,
    noise_for,
    sampler_kwargs,
    sampler_sigmas,
    txt2img_start,
)
from core.sampling.rng import ImageRNG
from core.sampling.samplers import SAMPLERS, find_sampler, split_sampler_name
from core.sampling.schedule import NoiseSchedule
from core.sampling.schedulers import SCHEDULERS
from tests.test_sampling_toys import DATA_STD, ToyModel, constant_conditioning

SCHEDULES = {
    "eps": NoiseSchedule.from_config(),
    "v": NoiseSchedule.from_config(prediction_type="v_prediction"),
    "zsnr-v": NoiseSchedule.from_config(zero_terminal_snr=True, prediction_type="v_prediction"),
}
SHAPE = (2, 4, 4, 4)


def run(sampler_name: str, scheduler: str, schedule: NoiseSchedule, steps: int = 3, cfg_scale: float = 5.0):
    info = find_sampler(sampler_name)
    model = ToyModel(schedule)
    sigmas = sampler_sigmas(info, scheduler, steps, schedule)
    rng = ImageRNG(SHAPE, seeds=[11, 12])
    x = txt2img_start(info, rng.first(), sigmas)
    conditioning = constant_conditioning(batch=2)
    cfg = CFGDenoiser(make_denoiser(info, model, schedule), lambda i: conditioning, cfg_scale, sigmas=sigmas)
    steps_seen: list[int] = []
    out = info.function(cfg, x, sigmas, callback=lambda d: steps_seen.append(d["i"]),
                        noise_sampler=noise_for(info, rng, x, sigmas), **sampler_kwargs(info))
    return out, model, steps_seen


CASES = [
    (sampler.name, scheduler.label, key)
    for sampler in SAMPLERS
    for scheduler in (SCHEDULERS if sampler.uses_schedule_type else SCHEDULERS[:1])
    for key in SCHEDULES
]


@pytest.mark.parametrize(("sampler_name", "scheduler", "schedule_key"), CASES)
def test_three_steps_run_without_nan(sampler_name, scheduler, schedule_key):
    out, model, steps_seen = run(sampler_name, scheduler, SCHEDULES[schedule_key])
    assert out.shape == SHAPE
    assert torch.isfinite(out).all(), (sampler_name, scheduler, schedule_key)
    assert model.calls >= 1 and steps_seen


def flow_reference(x_start, sigmas, mu):
    """Exact probability-flow ODE of the toy from sigmas[0] to sigma_min, then the final jump x = D(x)."""
    s2 = DATA_STD**2
    sigma_max, sigma_min = float(sigmas[0]), float(sigmas[-2])
    at_sigma_min = mu + (x_start - mu) * math.sqrt((s2 + sigma_min**2) / (s2 + sigma_max**2))
    return mu + (at_sigma_min - mu) * s2 / (s2 + sigma_min**2)


def test_euler_converges_to_the_ode_solution():
    """First-order convergence to the exact flow: ODE down to sigma_min, then the final jump to D(x)."""
    schedule = SCHEDULES["eps"]
    info = find_sampler("Euler")
    x_t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    mu = 0.3
    conditioning = constant_conditioning(mu=mu, uncond_mu=mu)
    errors = []
    for steps in (10, 40, 160):
        sigmas = sampler_sigmas(info, "Karras", steps, schedule)
        cfg = CFGDenoiser(make_denoiser(info, ToyModel(schedule), schedule), lambda i: conditioning, 7.0,
                          sigmas=sigmas)
        out = sample_euler(cfg, x_t * float(sigmas[0]), sigmas)
        errors.append(float((out - flow_reference(x_t * float(sigmas[0]), sigmas, mu)).abs().max()))
    assert errors[1] < errors[0] * 0.35 and errors[2] < errors[1] * 0.35
    assert errors[2] < 0.02


@pytest.mark.parametrize(("name", "fn"), [("Heun", sample_heun), ("DPM++ 2M", None)])
def test_second_order_samplers_converge_quadratically(name, fn):
    schedule = SCHEDULES["eps"]
    info = find_sampler(name)
    conditioning = constant_conditioning(mu=-0.2, uncond_mu=-0.2)
    x_t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))

    def err(sampler, steps):
        sigmas = sampler_sigmas(find_sampler("Euler"), "Karras", steps, schedule)
        cfg = CFGDenoiser(make_denoiser(info, ToyModel(schedule), schedule), lambda i: conditioning, 1.0,
                          sigmas=sigmas)
        x = x_t * float(sigmas[0])
        return float((sampler(cfg, x, sigmas) - flow_reference(x, sigmas, -0.2)).abs().max())

    second = fn or info.function
    assert err(second, 32) < err(second, 16) * 0.3  # halving the step quarters the error
    assert err(second, 16) < err(sample_euler, 16) / 3


@pytest.mark.parametrize("name", ["DPM++ 2M", "DPM++ SDE", "DPM++ 3M SDE", "Euler a", "DPM2 a", "UniPC", "DDIM",
                                  "DDIM CFG++",
                                  "PLMS", "LMS", "DPM fast", "DPM adaptive", "Restart"])
def test_samplers_land_near_the_data_distribution(name):
    """With cond == uncond == mu, 30 steps should end near mu with the data's spread, not at noise."""
    schedule = SCHEDULES["eps"]
    info = find_sampler(name)
    sigmas = sampler_sigmas(info, "Automatic", 30, schedule)
    rng = ImageRNG((8, 4, 16, 16), seeds=list(range(8)))
    x = txt2img_start(info, rng.first(), sigmas)
    conditioning = constant_conditioning(mu=0.4, uncond_mu=0.4, batch=8)
    cfg = CFGDenoiser(make_denoiser(info, ToyModel(schedule), schedule), lambda i: conditioning, 7.0, sigmas=sigmas)
    out = info.function(cfg, x, sigmas, noise_sampler=noise_for(info, rng, x, sigmas), **sampler_kwargs(info))
    assert float(out.mean()) == pytest.approx(0.4, abs=0.05)
    assert float(out.std()) == pytest.approx(DATA_STD, rel=0.15)


def test_model_calls_per_sampler_follow_the_webui():
    schedule = SCHEDULES["eps"]
    # DPM2 discards the penultimate sigma, so its last step is a single Euler evaluation. DDIM/PLMS at 3
    # steps get 4 timesteps (0, 333, 666, 999 + 1) and stop one short of the end: 3 calls (+1 PLMS warm-up).
    for name, steps, expected in (("Euler", 3, 3), ("Heun", 3, 5), ("DPM2", 3, 5), ("DPM++ 2M", 3, 3),
                                  ("DPM++ SDE", 3, 5), ("DDIM", 3, 3), ("DDIM", 20, 19), ("PLMS", 3, 4),
                                  ("UniPC", 3, 4), ("UniPC", 20, 20), ("UniPC", 30, 31), ("DPM fast", 3, 3), ("LCM", 3, 3)):
        _, model, _ = run(name, "Automatic", schedule, steps=steps, cfg_scale=5.0)
        assert model.calls == expected, (name, steps)


def test_img2img_plan_takes_the_schedule_tail():
    schedule = SCHEDULES["eps"]
    info = find_sampler("Euler")
    plan = img2img_plan(info, "Karras", 20, 0.5, schedule)
    full = sampler_sigmas(info, "Karras", 20, schedule)
    assert torch.equal(plan.sigmas, full[20 - 10 - 1:]) and plan.steps == 11
    init = torch.zeros(SHAPE)
    noise = torch.ones(SHAPE)
    assert torch.allclose(plan.start(init, noise), noise * float(full[9]))
    ddim = img2img_plan(find_sampler("DDIM"), "Automatic", 20, 0.5, schedule)
    assert len(ddim.sigmas) == 10 and float(ddim.sigmas[0]) == pytest.approx(float(schedule.sigmas[451]))
    assert ddim.noise_sigma == pytest.approx(float(schedule.sigmas[501])) and ddim.scale < 1.0


def test_sampler_table_names_and_options():
    assert [s.name for s in SAMPLERS] == [
        "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
        "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS",
        "UniPC", "LCM"]
    assert find_sampler("DPM++ 2M").default_scheduler == "karras"
    assert find_sampler("DPM++ 2M SDE").default_scheduler == "exponential"
    assert find_sampler("Euler a").default_scheduler is None
    assert find_sampler("DPM2").discard_penultimate and find_sampler("DPM++ 3M SDE").discard_penultimate
    assert find_sampler("DPM++ SDE").brownian_noise and find_sampler("DPM++ SDE").second_order
    assert find_sampler("k_euler_a").name == "Euler a" and find_sampler("k_dpm_ad").name == "DPM adaptive"
    assert sampler_kwargs(find_sampler("Euler a")) == {"eta": 1.0}
    assert sampler_kwargs(find_sampler("DDIM")) == {"eta": 0.0}
    assert sampler_kwargs(find_sampler("DPM++ 2M SDE Heun"), eta=0.5) == {"s_noise": 1.0, "eta": 0.5,
                                                                       "solver_type": "heun"}
    assert set(sampler_kwargs(find_sampler("Euler"))) == {"s_churn", "s_tmin", "s_tmax", "s_noise"}


@pytest.mark.parametrize(
    ("text", "scheduler", "expected"),
    [
        ("Euler a", None, ("Euler a", "Automatic")),
        ("Euler a", "Karras", ("Euler a", "Karras")),
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "Automatic")),
        ("DPM++ 2M", "Karras", ("DPM++ 2M", "Automatic")),
        ("DPM++ 2M", "Exponential", ("DPM++ 2M", "Exponential")),
        ("DPM++ 2M SDE Exponential", None, ("DPM++ 2M SDE", "Automatic")),
        ("DPM++ 2M SDE Karras", None, ("DPM++ 2M SDE", "Karras")),
        ("DPM++ 2M SDE Heun Karras", None, ("DPM++ 2M SDE Heun", "Karras")),
        ("LMS Karras", None, ("LMS", "Karras")),
        ("DPM2 a Karras", None, ("DPM2 a", "Automatic")),
        ("Euler SGMUniform", None, ("Euler", "SGM Uniform")),
        ("Euler sgm_uniform", None, ("Euler", "SGM Uniform")),
        ("k_dpmpp_2m_ka", None, ("DPM++ 2M", "Automatic")),
        ("k_lms_ka", None, ("LMS", "Karras")),
        ("k_dpmpp_3m_sde_exp", None, ("DPM++ 3M SDE", "Automatic")),
        ("k_euler_a", None, ("Euler a", "Automatic")),
        ("DDIM", "Karras", ("DDIM", "Karras")),
        ("Euler a Karras", None, ("Euler a", "Karras")),
        ("DPM++ 2M", "exponential", ("DPM++ 2M", "Exponential")),
        ("euler A", None, ("Euler a", "Automatic")),
        ("K_EULER_A", "Karras", ("Euler a", "Karras")),
        ("dpm++ 2m karras", None, ("DPM++ 2M", "Automatic")),
        ("k_dpmpp_2m Exponential", None, ("DPM++ 2M", "Exponential")),
        ("Euler a Karras", "Exponential", ("Euler a", "Karras")),  # the written schedule wins
        ("Euler a", "No such schedule", ("Euler a", "Automatic")),
        # unknown samplers come back as written, less the schedule (callers check find_sampler)
        ("No such sampler", None, ("No such sampler", "Automatic")),
        ("Euler Dy Karras", None, ("Euler Dy", "Karras")),
        (None, None, ("DPM++ 2M", "Automatic")),
    ],
)
def test_split_sampler_name(text, scheduler, expected):
    assert split_sampler_name(text, scheduler) == expected


def test_split_without_automatic_conversion_keeps_the_schedule():
    assert split_sampler_name("DPM++ 2M Karras", convert_automatic=False) == ("DPM++ 2M", "Karras")
    assert split_sampler_name("DPM++ 2M SDE", "Exponential", convert_automatic=False) == ("DPM++ 2M SDE", "Exponential")
