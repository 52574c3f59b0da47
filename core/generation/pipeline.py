"""One pipeline for every mode: encode → sample → decode from a LoadedModel and explicit arguments.

txt2img, img2img, inpaint, the hires-fix second pass, the Shapes checker and (later) training
previews and the X/Y/Z plot all sample through ``denoise``. Nothing here knows the Engine, the
settings or the queue: the caller hands in the model, the sampling pass, the noise and a
``StepReporter`` (progress, preview, Interrupt/Skip), so a test can build every piece itself.

    model_fn  = unet_fn(model, size)                       # raw eps / v prediction
    sp        = SamplingPass(sampler, scheduler, steps, cfg, ..., cond, uncond)
    out       = denoise(model, sp, schedule, rng, noise, size=(w, h), reporter=reporter,
                        init_latent=latent, denoising_strength=0.6, keep_mask=mask)
    images    = to_pil(decode(model, out.latents))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from core.errors import InvalidParameterError, JobInterrupted, JobSkipped
from core.generation import model_ops
from core.generation.cond_schedule import ConditioningCache, PromptSchedule, build_schedule, expand_batch
from core.sampling.cfg import CFGDenoiser, StepConditioning, pad_tokens_with_last
from core.sampling.plan import (
    img2img_plan,
    make_denoiser,
    noise_for,
    sampler_kwargs,
    sampler_sigmas,
    txt2img_start,
)
from core.sampling.samplers import KIND_TIMESTEPS, SamplerInfo, find_sampler
from core.sampling.schedule import NoiseSchedule
from core.sampling.schedulers import ScheduleOptions, find_scheduler
from core.sampling.timestep_samplers import UniPCOptions, sample_unipc

if TYPE_CHECKING:
    from core.models.checkpoint import LoadedModel
    from core.sampling.rng import ImageRNG

INTERRUPTED, SKIPPED = "interrupted", "skipped"


@dataclass
class SamplingPass:
    """Everything one denoise pass needs; the first pass and the hires pass each build one."""

    sampler: SamplerInfo
    scheduler: str  # the Schedule type label really used ("Automatic" resolved)
    steps: int
    cfg_scale: float
    cond: PromptSchedule | list[PromptSchedule]  # one for the batch, or one per picture
    uncond: PromptSchedule
    empty_context: torch.Tensor  # the encoding of "" (pads cond/uncond to equal length)
    rescale_cfg: float = 0.0
    eta: float | None = None  # None: the sampler's default
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    s_min_uncond: float = 0.0  # NGMS: below this sigma the negative prompt is not evaluated
    schedule_options: ScheduleOptions = field(default_factory=ScheduleOptions)
    sgm_noise_multiplier: bool = False  # txt2img's start noise scaled by sqrt(1 + sigma_max²)
    unipc: UniPCOptions = field(default_factory=UniPCOptions)  # the UniPC sampler's settings
    img2img_extra_noise: float = 0.0  # more noise on an init latent (img2img, hires fix), the WebUI's option

    @property
    def sampler_name(self) -> str:
        return self.sampler.name

    def kwargs(self) -> dict[str, Any]:
        kwargs = sampler_kwargs(self.sampler, eta=self.eta, s_churn=self.s_churn, s_tmin=self.s_tmin,
                                s_tmax=self.s_tmax, s_noise=self.s_noise)
        if self.sampler.function is sample_unipc:
            kwargs.update(self.unipc.sampler_kwargs())
        return kwargs


def resolve_sampler(name: str, field_name: str = "sampler_name") -> SamplerInfo:
    sampler = find_sampler(name)
    if sampler is None:
        raise InvalidParameterError(field_name, f"unknown sampler {name!r}",
                                    hint="see GET /sdapi/v1/samplers for the names")
    return sampler


def resolve_scheduler(name: str | None, sampler: SamplerInfo) -> str:
    """The Schedule type label a pass really uses ("Automatic" → the sampler's own default)."""
    info = find_scheduler(name or "Automatic")
    if info is None:
        raise InvalidParameterError("scheduler", f"unknown schedule type {name!r}",
                                    hint="see GET /sdapi/v1/schedulers for the names")
    if info.function is None and sampler.uses_schedule_type and sampler.default_scheduler:
        info = find_scheduler(sampler.default_scheduler) or info
    return info.label


def default_eta(sampler: SamplerInfo, eta_ancestral: float, eta_ddim: float) -> float:
    """The eta a sampler gets from the settings: DDIM-style samplers read "Eta for DDIM"."""
    return eta_ddim if sampler.kind == KIND_TIMESTEPS else eta_ancestral


def prompt_pass(cache: ConditioningCache, sampler: SamplerInfo, scheduler: str, steps: int, cfg_scale: float,
                prompt: str, negative_prompt: str, *, first_pass_steps: int | None = None,
                **options: Any) -> SamplingPass:
    """A SamplingPass whose prompt schedules are encoded through ``cache`` (each text once).

    ``first_pass_steps`` marks a hires-fix second pass: as in the WebUI, its prompt editing reads
    whole numbers past the first pass's steps, and fractions 1.x, as steps of this pass."""
    base, hires = (steps, None) if first_pass_steps is None else (first_pass_steps, steps)
    return SamplingPass(
        sampler=sampler, scheduler=scheduler, steps=steps, cfg_scale=cfg_scale,
        cond=build_schedule(cache, prompt, base, split_and=True, hires_steps=hires),
        uncond=build_schedule(cache, negative_prompt, base, split_and=False, hires_steps=hires),
        empty_context=cache.get("").context, **options)


class StepReporter:
    """The sampler's per-step callback: progress, live preview, and Interrupt/Skip between steps.

    ``ctx`` is the job's context (anything with ``advance``/``wants_preview``/``set_preview``);
    None runs silently. It keeps the last x0 prediction, which an interrupted pass returns.
    """

    def __init__(self, ctx: Any = None, preview: Any = None):
        self.ctx = ctx
        self.preview = preview  # LatentPreviewer or None
        self.last_denoised: torch.Tensor | None = None

    def __call__(self, info: dict) -> None:
        self.last_denoised = info["denoised"]
        if self.ctx is None:
            return
        i = int(info["i"])
        if self.preview is not None and self.ctx.wants_preview(i + 1):
            self.ctx.set_preview(self.preview.to_image(info["denoised"]))
        self.ctx.advance(1)


@dataclass
class Denoised:
    latents: torch.Tensor | None  # None: stopped before the first step finished
    stopped: str | None = None  # INTERRUPTED | SKIPPED | None


@dataclass
class Inpainting:
    """What inpainting adds to a pass. ``keep`` is 1 where the init latent stays (the WebUI's
    ``p.mask``); ``image_conditioning`` the 5 extra channels of an inpainting checkpoint."""

    keep: torch.Tensor | None = None
    image_conditioning: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def denoise(model: LoadedModel, sp: SamplingPass, schedule: NoiseSchedule, rng: ImageRNG, noise: torch.Tensor, *,
            size: tuple[int, int], reporter: StepReporter | None = None, init_latent: torch.Tensor | None = None,
            denoising_strength: float = 1.0, fix_steps: bool = False, inpaint: Inpainting | None = None,
            autocast: bool = False) -> Denoised:
    """One denoise pass: from noise (txt2img) or from ``init_latent`` raised to the strength's noise level.

    An Interrupt or Skip during the pass returns the last x0 prediction, as the WebUI does, so
    the caller can still decode and keep what the user saw in the preview.
    """
    sampler = sp.sampler
    batch = noise.shape[0]
    is_sdxl = model.spec.family == "sdxl"
    schedule_kwargs = {"is_sdxl": is_sdxl, **sp.schedule_options.sigma_kwargs(),
                       "always_discard_penultimate": sp.schedule_options.always_discard_penultimate,
                       "unipc_skip_type": sp.unipc.skip_type}
    if init_latent is None:
        sigmas = sampler_sigmas(sampler, sp.scheduler, sp.steps, schedule, **schedule_kwargs)
        full_sigmas = sigmas
        x = txt2img_start(sampler, noise, sigmas, sgm_noise_multiplier=sp.sgm_noise_multiplier)
    else:
        plan = img2img_plan(sampler, sp.scheduler, sp.steps, denoising_strength, schedule, fix_steps=fix_steps,
                            **schedule_kwargs)
        sigmas, full_sigmas = plan.sigmas, plan.full_sigmas
        x = plan.start(init_latent, noise, sp.img2img_extra_noise)

    denoiser = make_denoiser(sampler, model_ops.unet_fn(model, size, autocast=autocast), schedule)
    concat = inpaint.image_conditioning if inpaint is not None else None
    built: dict[tuple, StepConditioning] = {}

    def with_concat(cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return cond if concat is None else {**cond, "c_concat": concat}

    def conditioning_at(step: int) -> StepConditioning:
        # The same object while the schedule doesn't change, so CFGDenoiser batches it once.
        per_image = [c.at(step) for c in sp.cond] if isinstance(sp.cond, list) else [sp.cond.at(step)]
        uncond = sp.uncond.at(step)[0][0]
        key = (*(id(c) for parts in per_image for c, _ in parts), id(uncond))
        if key not in built:
            conds = [(with_concat(cond), w) for cond, w in batch_conditioning(per_image, batch)]
            built[key] = StepConditioning(conds=conds, uncond=with_concat(expand_batch(uncond, batch)))
        return built[key]

    keep = inpaint.keep if inpaint is not None else None
    cfg = CFGDenoiser(denoiser, conditioning_at, sp.cfg_scale, sigmas=sigmas, pad_with=sp.empty_context,
                      rescale_cfg=sp.rescale_cfg, s_min_uncond=sp.s_min_uncond, mask=keep, init_latent=init_latent if keep is not None else None)
    reporter = reporter or StepReporter()
    stopped = None
    with torch.no_grad():
        try:
            latents = sampler.function(cfg, x, sigmas, extra_args={}, callback=reporter,
                                       noise_sampler=noise_for(sampler, rng, x, full_sigmas), **sp.kwargs())
        except (JobInterrupted, JobSkipped) as exc:
            stopped = INTERRUPTED if isinstance(exc, JobInterrupted) else SKIPPED
            latents = reporter.last_denoised
    if latents is not None and keep is not None and init_latent is not None:
        latents = latents * (1 - keep) + init_latent * keep
    return Denoised(latents, stopped)


def batch_conditioning(per_image: list[list[tuple[Any, float]]], batch: int) -> list[tuple[dict, float]]:
    """Model kwargs for each AND part: one prompt repeated over the batch, or one prompt per
    picture stacked (shorter ones padded with their last token, as the WebUI's batches)."""
    if len(per_image) == 1:
        return [(expand_batch(c, batch), w) for c, w in per_image[0]]
    if len(per_image) != batch:
        raise InvalidParameterError("prompt", f"{len(per_image)} prompts for a batch of {batch}")
    weights = [w for _, w in per_image[0]]
    if any([w for _, w in parts] != weights for parts in per_image):
        raise InvalidParameterError("prompt", "the prompts of one batch need the same AND parts and weights")
    out = []
    for j, weight in enumerate(weights):
        conds = [parts[j][0] for parts in per_image]
        tokens = max(c.context.shape[1] for c in conds)
        entry = {"context": torch.cat([pad_tokens_with_last(c.context, tokens) for c in conds])}
        if getattr(conds[0], "pooled", None) is not None:
            entry["pooled"] = torch.cat([c.pooled for c in conds])
        out.append((entry, weight))
    return out


# --------------------------------------------------------------------------- pixels --
def decode(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    return to_pil(model_ops.decode(model, latents))


def encode(model: LoadedModel, images: list[Image.Image]) -> torch.Tensor:
    """RGB pictures of one size → scaled latents (the VAE distribution's mode)."""
    return model_ops.encode(model, from_pil(images, model_ops.model_device(model)))


def to_pil(decoded: torch.Tensor) -> list[Image.Image]:
    arr = (decoded.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def from_pil(images: list[Image.Image], device: Any = "cpu") -> torch.Tensor:
    arr = np.stack([np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device)
