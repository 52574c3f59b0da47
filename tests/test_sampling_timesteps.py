"""DDIM/PLMS in k-space give what the WebUI's VP-space timestep loops give (reference loops written here)."""

from __future__ import annotations

import math

import torch

from core.sampling.cfg import CFGDenoiser
from core.sampling.plan import img2img_plan, make_denoiser, sampler_sigmas, txt2img_start
from core.sampling.samplers import find_sampler
from core.sampling.schedule import NoiseSchedule
from core.sampling.timestep_samplers import ddim_timesteps, sample_unipc, unipc_sigmas
from tests.test_sampling_toys import ToyModel, constant_conditioning, context, ideal_denoised

CFG_SCALE = 6.0


def guided_eps(model: ToyModel, x_vp: torch.Tensor, t: int) -> torch.Tensor:
    """The WebUI's CFGDenoiserTimesteps on an eps model: CFG on the raw eps outputs."""
    ts = torch.full((x_vp.shape[0],), float(t))
    e_c = model(x_vp, ts, context=context(0.3, x_vp.shape[0]))
    e_u = model(x_vp, ts, context=context(-0.1, x_vp.shape[0]))
    return e_u + CFG_SCALE * (e_c - e_u)


def reference_ddim(model, schedule, x_vp, timesteps):
    """sd_samplers_timesteps_impl.ddim with eta 0."""
    ac = schedule.alphas_cumprod.float()
    alphas = ac[timesteps]
    alphas_prev = ac[torch.nn.functional.pad(torch.tensor(timesteps[:-1]), (1, 0))].double()
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = guided_eps(model, x_vp, timesteps[index])
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        pred_x0 = (x_vp - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
        x_vp = a_prev**0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t
    return x_vp


def reference_plms(model, schedule, x_vp, timesteps):
    """sd_samplers_timesteps_impl.plms."""
    ac = schedule.alphas_cumprod.float()
    alphas = ac[timesteps]
    alphas_prev = ac[torch.nn.functional.pad(torch.tensor(timesteps[:-1]), (1, 0))].double()
    old_eps = []

    def step(x, e, index):
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        pred_x0 = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
        return a_prev**0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = guided_eps(model, x_vp, timesteps[index])
        if not old_eps:
            x_prev = step(x_vp, e_t, index)
            e_prime = (e_t + guided_eps(model, x_prev, timesteps[max(index - 1, 0)])) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_vp = step(x_vp, e_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return x_vp


def kiln_run(name, schedule, x, sigmas):
    info = find_sampler(name)
    conditioning = constant_conditioning(mu=0.3, uncond_mu=-0.1, batch=x.shape[0])
    cfg = CFGDenoiser(make_denoiser(info, ToyModel(schedule), schedule), lambda i: conditioning, CFG_SCALE,
                      sigmas=sigmas)
    return info.function(cfg, x, sigmas)


def test_ddim_and_plms_match_the_webui_vp_loops():
    for prediction in ("epsilon", "v_prediction"):
        schedule = NoiseSchedule.from_config(prediction_type=prediction)
        eps_schedule = NoiseSchedule(schedule.alphas_cumprod, "epsilon")  # the reference works on eps
        noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
        for name, reference in (("DDIM", reference_ddim), ("PLMS", reference_plms)):
            sigmas = sampler_sigmas(find_sampler(name), "Automatic", 10, schedule)
            got = kiln_run(name, schedule, txt2img_start(find_sampler(name), noise, sigmas), sigmas)
            want = reference(ToyModel(eps_schedule), eps_schedule, noise.clone(), ddim_timesteps(10))
            assert torch.allclose(got, want, atol=2e-4), (name, prediction, float((got - want).abs().max()))


def test_ddim_img2img_matches_the_webui_start_quirk():
    schedule = NoiseSchedule.from_config()
    init = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(4)) * 0.5
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    plan = img2img_plan(find_sampler("DDIM"), "Automatic", 20, 0.6, schedule)
    got = kiln_run("DDIM", schedule, plan.start(init, noise), plan.sigmas)

    timesteps = ddim_timesteps(20)
    t_enc = int(0.6 * 20)
    a = float(schedule.alphas_cumprod.float()[timesteps[t_enc]])
    x_vp = init * a**0.5 + noise * (1 - a) ** 0.5
    want = reference_ddim(ToyModel(schedule), schedule, x_vp, timesteps[:t_enc])
    assert torch.allclose(got, want, atol=2e-4), float((got - want).abs().max())


def test_unipc_grid_follows_uniform_model_time():
    schedule = NoiseSchedule.from_config()
    sigmas = unipc_sigmas(20, schedule)
    assert len(sigmas) == 21
    t = schedule.sigma_to_t(sigmas)
    assert torch.allclose(t, torch.linspace(999, 0, 21), atol=0.05)


def test_unipc_orders_converge_as_designed():
    """On a log-uniform grid (constant step in lambda) UniPC-p with its corrector is order p + 1.

    (The WebUI's grid is uniform in model time, whose last step stays large in lambda, so there the
    observed order is much lower; that is the grid, not the solver.)
    """
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(6)).double()
    mu, s2 = 0.2, 0.25

    def model(x, sigma, **_):
        return ideal_denoised(x, sigma.double(), torch.full((2,), mu, dtype=torch.float64))

    def error(order, steps):
        sigmas = torch.linspace(math.log(14.6), math.log(0.03), steps + 1).exp()
        x = noise * float(sigmas[0])
        got = sample_unipc(model, x, sigmas, order=order)
        s_start, s_end = float(sigmas[0]), float(sigmas[-1])
        exact_k = mu + (x - mu) * ((s2 + s_end**2) / (s2 + s_start**2)) ** 0.5
        return float((got - exact_k / (1 + s_end**2) ** 0.5).abs().max())

    assert error(1, 10) / error(1, 20) > 3.5  # second order
    assert error(2, 10) / error(2, 20) > 7  # third order
    assert error(3, 20) < error(2, 20) / 10
