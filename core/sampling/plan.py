"""Glue the generation layer needs around a sampler: its sigmas, its denoiser, its starting latent.

    info = find_sampler("DPM++ 2M")
    sigmas = sampler_sigmas(info, "Automatic", steps, schedule)
    denoiser = make_denoiser(info, model_fn, schedule)
    x = txt2img_start(info, rng.first(), sigmas)                    # or img2img_plan(...) for img2img
    cfg = CFGDenoiser(denoiser, conditioning_at, cfg_scale, sigmas=sigmas)
    latent = info.function(cfg, x, sigmas, callback=..., noise_sampler=noise_for(info, rng, x, sigmas, seeds),
                           **sampler_kwargs(info, eta=None, s_noise=1.0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from core.errors import InvalidParameterError
from core.sampling import timestep_samplers
from core.sampling.denoiser import DiscreteDenoiser, ModelFn
from core.sampling.lcm import LCMDenoiser, LCMSchedule
from core.sampling.rng import BrownianTreeNoiseSampler, ImageRNG
from core.sampling.samplers import KIND_LCM, KIND_TIMESTEPS, SamplerInfo
from core.sampling.schedule import NoiseSchedule
from core.sampling.schedulers import get_sigmas
from core.sampling.timestep_samplers import ddim_timestep_sigmas, ddim_timesteps, unipc_sigmas


def sampler_schedule(info: SamplerInfo, schedule: NoiseSchedule) -> NoiseSchedule | LCMSchedule:
    """The sigma table the sampler sees (LCM keeps only its 50 distilled timesteps)."""
    return LCMSchedule(schedule) if info.kind == KIND_LCM else schedule


def make_denoiser(info: SamplerInfo, model_fn: ModelFn, schedule: NoiseSchedule) -> DiscreteDenoiser | LCMDenoiser:
    if info.kind == KIND_LCM:
        return LCMDenoiser(model_fn, LCMSchedule(schedule))
    return DiscreteDenoiser(model_fn, schedule)


def sampler_sigmas(
    info: SamplerInfo,
    scheduler: str,
    steps: int,
    schedule: NoiseSchedule,
    *,
    always_discard_penultimate: bool = False,
    unipc_skip_type: str = "time_uniform",
    **scheduler_options: Any,
) -> Tensor:
    """The full sigma list for ``steps`` (txt2img, or the list img2img cuts from).

    ``scheduler_options`` go to schedulers.get_sigmas (sigma_min, sigma_max, rho, is_sdxl, beta_alpha, ...);
    ``unipc_skip_type`` is UniPC's own grid (the WebUI's uni_pc_skip_type).
    """
    discard = info.discard_penultimate or always_discard_penultimate
    if info.kind == KIND_TIMESTEPS:
        steps = steps + 1 if discard else steps
        if info.function is timestep_samplers.sample_unipc:
            # The WebUI hands UniPC len(timesteps) steps, which exceeds ``steps`` when it does not divide 1000.
            return unipc_sigmas(len(ddim_timesteps(steps, len(schedule))), schedule, skip_type=unipc_skip_type)
        return ddim_timestep_sigmas(steps, schedule)
    return get_sigmas(scheduler, steps, sampler_schedule(info, schedule), discard_penultimate=discard,
                      default_scheduler=info.default_scheduler, **scheduler_options)


def txt2img_start(info: SamplerInfo, noise: Tensor, sigmas: Tensor, *, sgm_noise_multiplier: bool = False) -> Tensor:
    """Starting latent from unit noise. Timestep samplers start from the VP sample, i.e. k-space
    noise * sqrt(1 + sigma^2); so do k-diffusion samplers with the WebUI's "SGM noise multiplier"."""
    sigma_max = float(sigmas[0])
    if info.kind == KIND_TIMESTEPS or sgm_noise_multiplier:
        return noise * math.sqrt(1.0 + sigma_max**2)
    return noise * sigma_max


def img2img_steps(steps: int, denoising_strength: float, fix_steps: bool = False) -> tuple[int, int]:
    """(steps to build the schedule for, t_enc) as sd_samplers_common.setup_img2img_steps."""
    if fix_steps:
        total = int(steps / min(denoising_strength, 0.999)) if denoising_strength > 0 else 0
        return total, steps - 1
    return steps, int(min(denoising_strength, 0.999) * steps)


@dataclass
class Img2ImgPlan:
    """What an img2img run needs: the sigmas handed to the sampler and how to noise the init latent."""

    sigmas: Tensor  # passed to the sampler and to CFGDenoiser(sigmas=...)
    full_sigmas: Tensor  # the whole schedule (Brownian noise range)
    noise_sigma: float  # noise level the init latent is raised to
    scale: float  # k-space correction for the timestep samplers' start mismatch (1 for k-diffusion)
    steps: int  # progress-bar length (t_enc + 1 in the WebUI)

    def start(self, init_latent: Tensor, noise: Tensor, extra_noise: float = 0.0) -> Tensor:
        """The noised init latent. ``extra_noise``: the WebUI's img2img_extra_noise, the same noise
        added once more at that strength (k-space; the timestep samplers' sqrt(abar) cancels)."""
        return (init_latent + noise * (self.noise_sigma + extra_noise)) * self.scale


def img2img_plan(
    info: SamplerInfo,
    scheduler: str,
    steps: int,
    denoising_strength: float,
    schedule: NoiseSchedule,
    *,
    fix_steps: bool = False,
    always_discard_penultimate: bool = False,
    unipc_skip_type: str = "time_uniform",
    **scheduler_options: Any,
) -> Img2ImgPlan:
    """The WebUI's sample_img2img schedules: the tail of the full schedule that denoising strength keeps."""
    total, t_enc = img2img_steps(steps, denoising_strength, fix_steps)
    if total < 1:
        raise InvalidParameterError("denoising_strength", "must be above 0 for img2img sampling")
    if info.kind != KIND_TIMESTEPS:
        full = sampler_sigmas(info, scheduler, total, schedule,
                              always_discard_penultimate=always_discard_penultimate, **scheduler_options)
        tail = full[total - t_enc - 1:]
        return Img2ImgPlan(tail, full, float(tail[0]), 1.0, t_enc + 1)
    return _timestep_img2img_plan(info, total, t_enc, schedule, always_discard_penultimate, unipc_skip_type)


def _timestep_img2img_plan(info: SamplerInfo, total: int, t_enc: int, schedule: NoiseSchedule,
                           discard: bool, unipc_skip_type: str = "time_uniform") -> Img2ImgPlan:
    """DDIM/PLMS/UniPC noise the image to timesteps[t_enc] but then treat it as sitting at
    timesteps[t_enc - 1] (the WebUI's behaviour); in k-space that is a rescale by
    sqrt(abar[t_enc] / abar[t_enc - 1])."""
    total = total + 1 if discard else total
    timesteps = ddim_timesteps(total, len(schedule))
    t_enc = max(1, min(t_enc, len(timesteps) - 1))
    noise_t, start_t = timesteps[t_enc], timesteps[t_enc - 1]
    abar = schedule.alphas_cumprod.float().double()
    scale = math.sqrt(float(abar[noise_t]) / float(abar[start_t]))
    if info.function is timestep_samplers.sample_unipc:
        sigmas = unipc_sigmas(t_enc, schedule, t_start=(start_t + 1) / len(schedule), skip_type=unipc_skip_type)
    else:
        sigmas = schedule.sigmas[torch.tensor(timesteps[:t_enc][::-1])].clone()
    full = ddim_timestep_sigmas(total, schedule)
    return Img2ImgPlan(sigmas, full, float(schedule.sigmas[noise_t]), scale, t_enc + 1)


def noise_for(info: SamplerInfo, rng: ImageRNG, x: Tensor, full_sigmas: Tensor, *, brownian: bool = True):
    """The noise sampler the WebUI uses: Brownian trees seeded per image for the SDE samplers (unless the
    "no_dpmpp_sde_batch_determinism" setting turns ``brownian`` off), else the images' own generators."""
    if info.brownian_noise and brownian:
        positive = full_sigmas[full_sigmas > 0]
        return BrownianTreeNoiseSampler(x, float(positive.min()), float(full_sigmas.max()), seeds=rng.seeds)
    return rng.noise_sampler(x)


def sampler_kwargs(info: SamplerInfo, *, eta: float | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                   s_tmax: float = float("inf"), s_noise: float = 1.0) -> dict[str, Any]:
    """Keyword arguments for ``info.function`` from the user's settings, forwarding only what the WebUI does."""
    settings = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise}
    kwargs: dict[str, Any] = {k: settings[k] for k in info.extra_params}
    if info.uses_eta:
        kwargs["eta"] = info.eta_default if eta is None else eta
    kwargs.update(info.fixed_kwargs)
    return kwargs
