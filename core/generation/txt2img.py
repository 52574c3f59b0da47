"""txt2img (with hires fix), top to bottom: params → conditioning → sampling → decode → save.

One readable path, diffusers-pipeline style, on the shared pipeline (core.generation.pipeline).
The engine hands in a GenerationContext (the job's patched model and options); the job context
reports progress and stops the loop within one step on Interrupt/Skip.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from core.generation import model_ops
from core.generation.cond_schedule import ConditioningCache
from core.generation.filenames import NameContext
from core.generation.infotext import create_infotext
from core.generation.params import GeneratedImage, GenerationParams, GenerationResult, validate
from core.generation.pipeline import (
    INTERRUPTED,
    Inpainting,
    SamplingPass,
    StepReporter,
    decode,
    default_eta,
    denoise,
    encode,
    prompt_pass,
    resolve_sampler,
    resolve_scheduler,
)
from core.generation.preview import LatentPreviewer
from core.generation.saving import SaveOptions, save_image
from core.generation.upscale import is_latent_upscaler, upscale_latent
from core.prompts.conditioning import PromptEncoder
from core.prompts.extra_networks import parse_extra_networks
from core.sampling.rng import ImageRNG
from core.sampling.schedule import NoiseSchedule
from core.sampling.schedulers import ScheduleOptions
from core.sampling.timestep_samplers import UniPCOptions, sample_unipc

if TYPE_CHECKING:
    from core.generation.context import GenerationContext
    from core.generation.run_options import RunOptions
    from core.jobs import JobContext
    from core.models.checkpoint import LoadedModel

KILN_VERSION = "kiln-0.1.0"
log = logging.getLogger(__name__)


def random_seed() -> int:
    """The WebUI's range for a random seed."""
    return int(random.randrange(4294967294))


def sampler_options(p: GenerationParams, sampler, options: RunOptions) -> dict[str, Any]:
    """eta / sigma churn / noise / NGMS / schedule settings for a pass: the request's values, else
    the job's options."""
    eta = p.eta if p.eta is not None else default_eta(sampler, options.eta_ancestral, options.eta_ddim)
    return {
        "eta": eta,
        "s_churn": p.s_churn if p.s_churn is not None else options.s_churn,
        "s_tmin": p.s_tmin if p.s_tmin is not None else options.s_tmin,
        "s_tmax": p.s_tmax if p.s_tmax is not None else options.sigma_tmax,
        "s_noise": p.s_noise if p.s_noise is not None else options.s_noise,
        "s_min_uncond": ngms(p, options),
        "schedule_options": ScheduleOptions.from_options(options),
        "sgm_noise_multiplier": bool(options.sgm_noise_multiplier),
        "unipc": UniPCOptions.from_options(options),
        "img2img_extra_noise": float(options.img2img_extra_noise or 0.0),
    }


def ngms(p: GenerationParams, options: RunOptions) -> float:
    """The pass's "Negative Guidance minimum sigma": the request's s_min_uncond, else the option."""
    return float(p.s_min_uncond if p.s_min_uncond is not None else options.s_min_uncond or 0.0)


def prompt_encoder(gc: GenerationContext, p: GenerationParams) -> ConditioningCache:
    clip_skip = p.clip_skip or gc.options.clip_skip
    model = gc.model
    encoder = PromptEncoder(model.tokenizers, model.text_encoders, model.spec.family, embeddings=gc.embeddings)
    return ConditioningCache(encoder, clip_skip)


def image_rng(p: GenerationParams, gc: GenerationContext, sampler, seeds: list[int], subseeds: list[int],
              shape: tuple[int, ...]) -> ImageRNG:
    options = gc.options
    return ImageRNG(shape, seeds, subseeds=subseeds, subseed_strength=p.subseed_strength,
                    seed_resize_from_h=p.seed_resize_from_h, seed_resize_from_w=p.seed_resize_from_w,
                    source=options.randn_source or "GPU", device=gc.model.device,
                    latent_factor=model_ops.vae_downscale(gc.model),
                    eta_noise_seed_delta=int(options.eta_noise_seed_delta or 0) if sampler.uses_ensd else 0)


@dataclass
class JobSetup:
    """What every generation mode works out first from its parameters."""

    seed: int
    subseed: int
    prompt: str  # without the extra-network tags (the engine applied them)
    negative: str
    sampler: Any
    scheduler: str
    noise_schedule: NoiseSchedule
    cache: ConditioningCache

    def __iter__(self):
        return iter((self.seed, self.subseed, self.prompt, self.negative, self.sampler, self.scheduler,
                     self.noise_schedule, self.cache))


def job_setup(gc: GenerationContext, p: GenerationParams) -> JobSetup:
    """Seeds (-1 = random), prompts without <lora:..> tags, sampler, schedule type, noise schedule, encoder."""
    spec = gc.model.spec
    sampler = resolve_sampler(p.sampler_name)
    return JobSetup(
        seed=random_seed() if p.seed in (-1, None) else int(p.seed),
        subseed=random_seed() if p.subseed in (-1, None) else int(p.subseed),
        prompt=parse_extra_networks(p.prompt)[0], negative=parse_extra_networks(p.negative_prompt)[0],
        sampler=sampler, scheduler=resolve_scheduler(p.scheduler, sampler),
        noise_schedule=NoiseSchedule.from_config(prediction_type=spec.prediction_type,
                                                 zero_terminal_snr=spec.zero_terminal_snr),
        cache=prompt_encoder(gc, p))


def run_txt2img(gc: GenerationContext, params: GenerationParams, ctx: JobContext) -> GenerationResult:
    p = validate(params)
    model, options = gc.model, gc.options
    spec = model.spec
    warnings: list[str] = [*p.notes, *gc.warnings]

    seed, subseed, prompt, negative, sampler, scheduler, noise_schedule, cache = job_setup(gc, p)

    hires = p.hires
    hr_steps = (hires.steps or p.steps) if hires.enabled else None
    first = prompt_pass(cache, sampler, scheduler, p.steps, p.cfg_scale, prompt, negative, rescale_cfg=p.rescale_cfg,
                        **sampler_options(p, sampler, options))
    second = None
    if hires.enabled:
        hr_sampler = resolve_sampler(hires.sampler_name, "hr_sampler_name") if hires.sampler_name else sampler
        hr_prompt, _ = parse_extra_networks(hires.prompt or p.prompt)
        hr_negative, _ = parse_extra_networks(hires.negative_prompt or p.negative_prompt)
        second = prompt_pass(cache, hr_sampler, resolve_scheduler(hires.scheduler or scheduler, hr_sampler), hr_steps,
                             hires.cfg_scale if hires.cfg_scale is not None else p.cfg_scale, hr_prompt, hr_negative,
                             first_pass_steps=p.steps, rescale_cfg=p.rescale_cfg,
                             **sampler_options(p, hr_sampler, options))

    steps_per_batch = p.steps + (hr_steps or 0)
    ctx.set_total(steps_per_batch * p.batch_count, job_count=p.total_images)
    reporter = StepReporter(ctx, LatentPreviewer(model.vae, spec.vae_scaling_factor, model_ops.latent_channels(model),
                                                   full=options.show_progress_type == "Full"))
    factor = model_ops.vae_downscale(model)
    base_infotext = _infotext_params(gc, p, sampler.name, scheduler, hires, second, cache)
    folder = gc.output_root(options.outdir_txt2img_samples)
    images: list[GeneratedImage] = []
    interrupted = False

    for n in range(p.batch_count):
        seeds = [seed + n * p.batch_size + i for i in range(p.batch_size)]
        subseeds = [subseed + n * p.batch_size + i for i in range(p.batch_size)]
        shape = (model_ops.latent_channels(model), p.height // factor, p.width // factor)
        rng = image_rng(p, gc, sampler, seeds, subseeds, shape)
        ctx.set_text(f"Batch {n + 1} of {p.batch_count}")
        inpaint = _txt2img_image_conditioning(model, p.batch_size, shape)
        out = denoise(model, first, noise_schedule, rng, rng.first(), size=(p.width, p.height), reporter=reporter,
                      inpaint=inpaint, autocast=gc.autocast)
        latents = out.latents
        if second is not None and out.stopped is None:
            def make_rng(shape, seeds=seeds, subseeds=subseeds, sampler=second.sampler) -> ImageRNG:
                return image_rng(p, gc, sampler, seeds, subseeds, shape)

            hr_out = _hires_pass(gc, second, noise_schedule, make_rng, latents, p, ctx, reporter)
            latents, out.stopped = (hr_out.latents if hr_out.latents is not None else latents), hr_out.stopped
        if latents is None:  # stopped before the first step finished: nothing to show
            interrupted = interrupted or out.stopped == INTERRUPTED
            if interrupted:
                break
            continue
        for i, image in enumerate(decode(model, latents)):
            images.append(keep_image(image, p, options, folder, prompt, base_infotext, seeds[i], subseeds[i], ctx,
                                     names=name_context(gc, p, prompt, seeds, i, n)))
        if out.stopped == INTERRUPTED or ctx.interrupted:
            interrupted = True
            break
    return GenerationResult(images=images, params=p.replace(seed=seed, subseed=subseed), warnings=warnings,
                            interrupted=interrupted)


def keep_image(image, p: GenerationParams, options: RunOptions, folder, prompt: str, infotext: dict[str, object],
               seed: int, subseed: int, ctx: JobContext, names: NameContext | None = None) -> GeneratedImage:
    """One finished picture: its infotext, saved when the job saves (under ``folder``, the samples
    folder, as the saving options name it), counted in the progress."""
    info = create_infotext(p.prompt, p.negative_prompt, {**infotext, "Seed": seed, **variation_infotext(p, subseed)})
    path = None
    if p.save_images and options.samples_save:
        context = names or NameContext(seed=seed, prompt=prompt, negative_prompt=p.negative_prompt)
        saved = save_image(image, folder, replace(context, seed=seed, job_timestamp=job_timestamp(ctx)), info,
                           SaveOptions.of(options))
        path = str(saved.path)
        for note in saved.notes:  # a JPEG too large or an infotext too long for EXIF: said, not hidden
            log.warning("%s: %s", saved.path, note)
    ctx.image_done()
    return GeneratedImage(image=image, seed=seed, subseed=subseed, infotext=info, path=path)


def job_timestamp(ctx: Any) -> str:
    """The WebUI's [job_timestamp]: when the job started, ``%Y%m%d%H%M%S`` ("" when unknown)."""
    from datetime import datetime

    job = getattr(ctx, "job", None)  # an X/Y/Z cell's context has none: the tag falls back to now
    started = job.progress.started_at if job is not None else None
    return datetime.fromtimestamp(started).strftime("%Y%m%d%H%M%S") if started else ""


def name_context(gc: GenerationContext, p: GenerationParams, prompt: str, seeds: list[int], index: int,
                 iteration: int, denoising_strength: float | None = None) -> NameContext:
    """What the file name tags of picture ``index`` of batch ``iteration`` read."""
    hires = getattr(p, "hires", None)
    if denoising_strength is None and hires is not None and hires.enabled:
        denoising_strength = hires.denoising_strength
    return NameContext(
        seed=seeds[index], prompt=prompt, negative_prompt=p.negative_prompt, styles=tuple(p.styles),
        style_prompts=gc.style_prompts, steps=p.steps, cfg_scale=p.cfg_scale, sampler=p.sampler_name,
        scheduler=p.scheduler, model_name=gc.model_name, model_hash=gc.model_hash, vae_name=gc.vae_name,
        denoising_strength=denoising_strength, clip_skip=p.clip_skip or gc.options.clip_skip,
        batch_size=p.batch_size, batch_index=index, iteration=iteration, batch_count=p.batch_count,
        all_seeds=tuple(seeds))


def _txt2img_image_conditioning(model: LoadedModel, batch: int, shape: tuple[int, ...]) -> Inpainting | None:
    """An inpainting checkpoint in txt2img: a mask of ones and the latents of an all-grey picture (WebUI)."""
    if not model_ops.is_inpainting(model):
        return None
    factor = model_ops.vae_downscale(model)
    grey = torch.full((1, 3, shape[1] * factor, shape[2] * factor), 0.5, device=model_ops.model_device(model))
    latent = model_ops.encode(model, grey)
    mask = torch.ones_like(latent[:, :1])
    return Inpainting(image_conditioning=torch.cat([mask, latent], dim=1).expand(batch, -1, -1, -1))


def _number(value: float) -> float | int:
    """7.0 → 7: the WebUI's infotext shows whole-number floats from its sliders without ".0"."""
    return int(value) if float(value).is_integer() else value


def variation_infotext(p: GenerationParams, subseed: int) -> dict[str, object]:
    if p.subseed_strength == 0:
        return {}
    return {"Variation seed": subseed, "Variation seed strength": p.subseed_strength}


def _hires_pass(gc: GenerationContext, sp: SamplingPass, schedule: NoiseSchedule, make_rng, latents: torch.Tensor,
                p: GenerationParams, ctx: JobContext, reporter: StepReporter):
    hires = p.hires
    model = gc.model
    width, height = hires.target_size(p.width, p.height)
    factor = model_ops.vae_downscale(model)
    if is_latent_upscaler(hires.upscaler):
        init = upscale_latent(latents, hires.upscaler, width, height, factor)
    else:
        upscaled = [gc.upscale_image(img, hires.upscaler, width, height) for img in decode(model, latents)]
        init = encode(model, upscaled)
    ctx.set_text(f"Hires fix: {width}x{height}")
    # The WebUI draws the second pass's noise from fresh per-image generators at the new size.
    rng = make_rng(tuple(init.shape[1:]))
    noise = rng.next().to(init.device)
    # Hires fix passes its steps explicitly, so the WebUI's "exact steps" rule applies.
    return denoise(model, sp, schedule, rng, noise, size=(width, height), reporter=reporter,
                   init_latent=init.to(noise.dtype), denoising_strength=hires.denoising_strength, fix_steps=True,
                   inpaint=_txt2img_image_conditioning(model, init.shape[0], tuple(init.shape[1:])),
                   autocast=gc.autocast)


def _infotext_params(gc: GenerationContext, p: GenerationParams, sampler: str, scheduler: str, hires,
                     second: SamplingPass | None, cache: ConditioningCache) -> dict[str, object]:
    params = base_infotext(gc, p, sampler, scheduler, cache.clip_skip,
                           denoising_strength=hires.denoising_strength if hires.enabled else None)
    if gc.options.sgm_noise_multiplier:  # only txt2img's start noise is scaled (the WebUI's sample())
        params["SGM noise multiplier"] = True
    if hires.enabled and second is not None:
        if hires.resize_x or hires.resize_y:
            tw, th = hires.target_size(p.width, p.height)
            params["Hires resize"] = f"{tw}x{th}"
        else:
            params["Hires upscale"] = hires.scale
        if hires.steps:
            params["Hires steps"] = hires.steps
        params["Hires upscaler"] = hires.upscaler
        if hires.sampler_name and hires.sampler_name != sampler:
            params["Hires sampler"] = second.sampler_name
        if hires.scheduler and hires.scheduler != scheduler:
            params["Hires schedule type"] = second.scheduler
        if hires.prompt and hires.prompt != p.prompt:
            params["Hires prompt"] = hires.prompt
        if hires.negative_prompt and hires.negative_prompt != p.negative_prompt:
            params["Hires negative prompt"] = hires.negative_prompt
        if hires.cfg_scale is not None and hires.cfg_scale != p.cfg_scale:
            params["Hires CFG Scale"] = hires.cfg_scale
    return finish_infotext(params, gc, p, cache)


def base_infotext(gc: GenerationContext, p: GenerationParams, sampler: str, scheduler: str, clip_skip: int, *,
                  denoising_strength: float | None = None, mask_weight: float | None = None) -> dict[str, object]:
    """The keys every mode writes first, in the WebUI's order (Steps ... Clip skip, RNG, Eta, ENSD)."""
    options = gc.options
    params: dict[str, object] = {
        "Steps": p.steps,
        "Sampler": sampler,
        "Schedule type": scheduler,
        "CFG scale": _number(p.cfg_scale),
        "Seed": None,
        "Size": f"{p.width}x{p.height}",
        # The WebUI's add_*_to_info options leave them out (a studio sharing pictures, not models).
        "Model hash": gc.model_hash if options.add_model_hash_to_info else None,
        "Model": gc.model_name if options.add_model_name_to_info else None,
    }
    if gc.vae_name is not None:
        params["VAE hash"] = gc.vae_hash if options.add_vae_hash_to_info else None
        params["VAE"] = gc.vae_name if options.add_vae_name_to_info else None
    if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"
    if denoising_strength is not None:
        params["Denoising strength"] = denoising_strength
        if options.img2img_extra_noise:
            params["Extra noise"] = options.img2img_extra_noise
    if mask_weight is not None:
        params["Conditional mask weight"] = mask_weight
    if clip_skip > 1:
        params["Clip skip"] = clip_skip
    if (options.randn_source or "GPU") != "GPU":
        params["RNG"] = options.randn_source
    info = resolve_sampler(sampler)
    if info.uses_eta:
        eta = p.eta if p.eta is not None else default_eta(info, options.eta_ancestral, options.eta_ddim)
        if eta is not None and eta != info.eta_default:
            params["Eta DDIM" if info.kind == "timesteps" else "Eta"] = eta
    if options.eta_noise_seed_delta and info.uses_ensd:
        params["ENSD"] = options.eta_noise_seed_delta
    if ngms(p, options):
        params["NGMS"] = ngms(p, options)
    if info.kind != "timesteps":  # DDIM / PLMS / UniPC walk timesteps: no sigma schedule to change
        params.update(ScheduleOptions.from_options(options).infotext(scheduler, sampler_discards=info.discard_penultimate))
    elif options.always_discard_next_to_last_sigma:
        params["Discard penultimate sigma"] = True
    if info.function is sample_unipc:
        params.update(UniPCOptions.from_options(options).infotext())
    return params


def finish_infotext(params: dict[str, object], gc: GenerationContext, p: GenerationParams,
                    cache: ConditioningCache) -> dict[str, object]:
    """The keys every mode writes last: networks, Rescale CFG, TI hashes, Emphasis, Version, Notes."""
    params.update(gc.network_infotext)
    if p.rescale_cfg > 0:  # Forge writes it whenever the slider is off zero
        params["Rescale CFG"] = p.rescale_cfg
    used = cache.used_embeddings
    if used:
        params["TI hashes"] = ", ".join(f"{name}: {emb.hash[:12]}" for name, emb in used.items())
    if any(ch in p.prompt + p.negative_prompt for ch in "()[]"):
        params["Emphasis"] = None  # "Original" emphasis is the default: the WebUI writes nothing
    for key, value in p.extra_generation_params.items():
        params.setdefault(str(key), value)
    params["Version"] = KILN_VERSION
    if p.notes:
        params["Notes"] = "; ".join(p.notes)
    return params
