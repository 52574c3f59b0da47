"""txt2img (with hires fix), top to bottom: params → conditioning → sampling → decode → save.

One readable path, diffusers-pipeline style. The engine hands in the loaded model; the job
context reports progress and stops the loop within one step on Interrupt/Skip.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from core.errors import InvalidParameterError, JobInterrupted, JobSkipped
from core.generation import model_ops
from core.generation.cond_schedule import ConditioningCache, PromptSchedule, build_schedule, expand_batch
from core.generation.infotext import create_infotext
from core.generation.params import GeneratedImage, GenerationParams, GenerationResult, validate
from core.generation.preview import LatentPreviewer
from core.generation.saving import output_folder, save_png
from core.generation.upscale import is_latent_upscaler, resize_image, upscale_latent
from core.prompts.conditioning import PromptEncoder
from core.prompts.extra_networks import parse_extra_networks
from core.sampling.cfg import CFGDenoiser, StepConditioning
from core.sampling.plan import (
    img2img_plan,
    make_denoiser,
    noise_for,
    sampler_kwargs,
    sampler_sigmas,
    txt2img_start,
)
from core.sampling.rng import ImageRNG
from core.sampling.samplers import find_sampler
from core.sampling.schedule import NoiseSchedule
from core.sampling.schedulers import find_scheduler

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobContext
    from core.models.checkpoint import LoadedModel

KILN_VERSION = "kiln-0.1.0"


def random_seed() -> int:
    """The WebUI's range for a random seed."""
    return int(random.randrange(4294967294))


@dataclass
class SamplingPass:
    """Everything one denoise pass needs; the first pass and the hires pass each build one."""

    sampler_name: str
    scheduler_name: str
    steps: int
    cfg_scale: float
    rescale_cfg: float
    cond: PromptSchedule
    uncond: PromptSchedule
    empty_context: torch.Tensor  # the encoding of "" (pads cond/uncond to equal length)


def run_txt2img(engine: Engine, model: LoadedModel, params: GenerationParams, ctx: JobContext) -> GenerationResult:
    p = validate(params)
    opts = engine.settings.options
    spec = model.spec
    warnings: list[str] = list(p.notes)

    seed = random_seed() if p.seed in (-1, None) else int(p.seed)
    subseed = random_seed() if p.subseed in (-1, None) else int(p.subseed)
    clip_skip = p.clip_skip or int(getattr(opts, "CLIP_stop_at_last_layers", 1) or 1)

    # Extra-network tags (<lora:..>, <hypernet:..>) leave the prompt text and change the model.
    prompt, networks = parse_extra_networks(p.prompt)
    negative, negative_networks = parse_extra_networks(p.negative_prompt)
    for kind, items in negative_networks.items():
        networks.setdefault(kind, []).extend(items)
    extra_params: dict[str, object] = {}
    extras = engine.extras
    if extras is not None:
        activation = extras.activate(networks)
        warnings.extend(activation.warnings)
        extra_params.update(activation.infotext)
    elif networks:
        warnings.append("extra networks are not available for this model; tags ignored")

    sampler = find_sampler(p.sampler_name)
    if sampler is None:
        raise InvalidParameterError("sampler_name", f"unknown sampler {p.sampler_name!r}",
                                    hint="see GET /sdapi/v1/samplers for the names")
    scheduler = resolve_scheduler(p.scheduler, sampler)

    noise_schedule = NoiseSchedule.from_config(prediction_type=spec.prediction_type,
                                               zero_terminal_snr=spec.zero_terminal_snr)
    encoder = PromptEncoder(model.tokenizers, model.text_encoders, spec.family,
                            embeddings=extras.embeddings if extras is not None else None)
    cache = ConditioningCache(encoder, clip_skip)

    hires = p.hires
    hr_steps = (hires.steps or p.steps) if hires.enabled else None
    first = SamplingPass(
        sampler_name=sampler.name, scheduler_name=scheduler, steps=p.steps, cfg_scale=p.cfg_scale,
        rescale_cfg=p.rescale_cfg,
        cond=build_schedule(cache, prompt, p.steps, split_and=True, hires_steps=hr_steps),
        uncond=build_schedule(cache, negative, p.steps, split_and=False, hires_steps=hr_steps),
        empty_context=cache.get("").context,
    )
    second = None
    if hires.enabled:
        hr_sampler = find_sampler(hires.sampler_name) if hires.sampler_name else sampler
        if hr_sampler is None:
            raise InvalidParameterError("hr_sampler_name", f"unknown sampler {hires.sampler_name!r}")
        hr_prompt, _ = parse_extra_networks(hires.prompt or p.prompt)
        hr_negative, _ = parse_extra_networks(hires.negative_prompt or p.negative_prompt)
        second = SamplingPass(
            sampler_name=hr_sampler.name, scheduler_name=resolve_scheduler(hires.scheduler or scheduler, hr_sampler),
            steps=hr_steps, cfg_scale=hires.cfg_scale if hires.cfg_scale is not None else p.cfg_scale,
            rescale_cfg=p.rescale_cfg,
            cond=build_schedule(cache, hr_prompt, hr_steps, split_and=True),
            uncond=build_schedule(cache, hr_negative, hr_steps, split_and=False),
            empty_context=first.empty_context,
        )

    steps_per_batch = p.steps + (hr_steps or 0)
    ctx.set_total(steps_per_batch * p.batch_count, job_count=p.total_images)
    previewer = LatentPreviewer(model.vae, spec.vae_scaling_factor, model_ops.latent_channels(model))
    factor = model_ops.vae_downscale(model)
    base_infotext = _infotext_params(engine, model, p, sampler.name, scheduler, clip_skip, opts, hires, second,
                                     extra_params, cache)
    folder = output_folder(engine.paths.resolve_output(opts.outdir_txt2img_samples))
    images: list[GeneratedImage] = []
    interrupted = False

    for n in range(p.batch_count):
        seeds = [seed + n * p.batch_size + i for i in range(p.batch_size)]
        subseeds = [subseed + n * p.batch_size + i for i in range(p.batch_size)]
        def make_rng(shape, seeds=seeds, subseeds=subseeds) -> ImageRNG:
            return ImageRNG(shape, seeds, subseeds=subseeds, subseed_strength=p.subseed_strength,
                            seed_resize_from_h=p.seed_resize_from_h, seed_resize_from_w=p.seed_resize_from_w,
                            source=_rng_source(opts), device=model.device, latent_factor=factor,
                            eta_noise_seed_delta=int(opts.eta_noise_seed_delta or 0) if sampler.uses_ensd else 0)

        rng = make_rng((model_ops.latent_channels(model), p.height // factor, p.width // factor))
        try:
            ctx.set_text(f"Batch {n + 1} of {p.batch_count}")
            latents = _sample(engine, model, first, noise_schedule, rng, rng.first(), None, p, ctx, previewer,
                              (p.width, p.height))
            if second is not None:
                latents = _hires_pass(engine, model, second, noise_schedule, make_rng, latents, p, ctx, previewer)
            decoded = model_ops.decode(model, latents)
        except JobSkipped:
            ctx.advance(0)
            continue
        except JobInterrupted:
            interrupted = True
            break
        for i, image in enumerate(_to_pil(decoded)):
            info = create_infotext(p.prompt, p.negative_prompt,
                                   {**base_infotext, "Seed": seeds[i], **_variation(p, subseeds[i])})
            path = None
            if p.save_images and getattr(opts, "samples_save", True):
                path = str(save_png(image, folder, seeds[i], prompt, info))
            images.append(GeneratedImage(image=image, seed=seeds[i], subseed=subseeds[i], infotext=info, path=path))
            ctx.image_done()
        if ctx.interrupted:
            interrupted = True
            break
    return GenerationResult(images=images, params=p.replace(seed=seed, subseed=subseed), warnings=warnings,
                            interrupted=interrupted)


def resolve_scheduler(name: str | None, sampler) -> str:
    """The Schedule type label a pass really uses ("Automatic" → the sampler's own default)."""
    info = find_scheduler(name or "Automatic")
    if info is None:
        raise InvalidParameterError("scheduler", f"unknown schedule type {name!r}",
                                    hint="see GET /sdapi/v1/schedulers for the names")
    if info.function is None and sampler.uses_schedule_type and sampler.default_scheduler:
        info = find_scheduler(sampler.default_scheduler) or info
    return info.label


def _number(value: float) -> float | int:
    """7.0 → 7: the WebUI's infotext shows whole-number floats from its sliders without ".0"."""
    return int(value) if float(value).is_integer() else value


def _rng_source(opts) -> str:
    return str(getattr(opts, "randn_source", "GPU") or "GPU")


def _variation(p: GenerationParams, subseed: int) -> dict[str, object]:
    if p.subseed_strength == 0:
        return {}
    return {"Variation seed": subseed, "Variation seed strength": p.subseed_strength}


def _sample(engine: Engine, model: LoadedModel, sp: SamplingPass, schedule: NoiseSchedule, rng: ImageRNG,
            noise: torch.Tensor, init_latent: torch.Tensor | None, p: GenerationParams, ctx: JobContext,
            previewer: LatentPreviewer, size: tuple[int, int], denoising_strength: float = 1.0) -> torch.Tensor:
    """One denoise pass. ``init_latent`` given → img2img from it (the hires-fix second pass)."""
    sampler = find_sampler(sp.sampler_name)
    opts = engine.settings.options
    batch = noise.shape[0]
    is_sdxl = model.spec.family == "sdxl"
    if init_latent is None:
        sigmas = sampler_sigmas(sampler, sp.scheduler_name, sp.steps, schedule, is_sdxl=is_sdxl)
        full_sigmas = sigmas
        x = txt2img_start(sampler, noise, sigmas)
    else:
        # Hires fix passes its steps explicitly, so the WebUI's "exact steps" rule applies.
        plan = img2img_plan(sampler, sp.scheduler_name, sp.steps, denoising_strength, schedule, fix_steps=True,
                            is_sdxl=is_sdxl)
        sigmas, full_sigmas = plan.sigmas, plan.full_sigmas
        x = plan.start(init_latent, noise)

    denoiser = make_denoiser(sampler, model_ops.unet_fn(model, size, autocast=engine.autocast), schedule)

    built: dict[tuple, StepConditioning] = {}

    def conditioning_at(step: int) -> StepConditioning:
        # The same object while the schedule doesn't change, so CFGDenoiser batches it once.
        parts, uncond = sp.cond.at(step), sp.uncond.at(step)[0][0]
        key = (*(id(c) for c, _ in parts), id(uncond))
        if key not in built:
            conds = [(expand_batch(c, batch), w) for c, w in parts]
            built[key] = StepConditioning(conds=conds, uncond=expand_batch(uncond, batch))
        return built[key]

    cfg = CFGDenoiser(denoiser, conditioning_at, sp.cfg_scale, sigmas=sigmas, pad_with=sp.empty_context,
                      rescale_cfg=sp.rescale_cfg)

    def callback(info: dict) -> None:
        i = int(info["i"])
        if ctx.wants_preview(i + 1):
            ctx.set_preview(previewer.to_image(info["denoised"]))
        ctx.advance(1)

    eta = p.eta if p.eta is not None else (opts.eta_ancestral if sampler.kind != "timesteps" else None)
    s_noise = p.s_noise if p.s_noise is not None else opts.s_noise
    kwargs = sampler_kwargs(sampler, eta=eta, s_noise=s_noise)
    with torch.inference_mode():
        return sampler.function(cfg, x, sigmas, extra_args={}, callback=callback,
                                noise_sampler=noise_for(sampler, rng, x, full_sigmas), **kwargs)


def _hires_pass(engine: Engine, model: LoadedModel, sp: SamplingPass, schedule: NoiseSchedule, make_rng,
                latents: torch.Tensor, p: GenerationParams, ctx: JobContext, previewer: LatentPreviewer) -> torch.Tensor:
    hires = p.hires
    width, height = hires.target_size(p.width, p.height)
    factor = model_ops.vae_downscale(model)
    if is_latent_upscaler(hires.upscaler):
        init = upscale_latent(latents, hires.upscaler, width, height, factor)
    else:
        images = _to_pil(model_ops.decode(model, latents))
        upscaled = [_upscale_image(engine, img, hires.upscaler, width, height) for img in images]
        init = model_ops.encode(model, _from_pil(upscaled, latents.device))
    ctx.set_text(f"Hires fix: {width}x{height}")
    # The WebUI draws the second pass's noise from fresh per-image generators at the new size.
    rng = make_rng(tuple(init.shape[1:]))
    noise = rng.next().to(init.device)
    return _sample(engine, model, sp, schedule, rng, noise, init.to(noise.dtype), p, ctx, previewer, (width, height),
                   denoising_strength=hires.denoising_strength)


def _upscale_image(engine: Engine, image: Image.Image, name: str, width: int, height: int) -> Image.Image:
    from core.generation.upscale import IMAGE_RESAMPLERS

    if name in IMAGE_RESAMPLERS:
        return resize_image(image, name, width, height)
    if name not in engine.upscalers.names():
        raise InvalidParameterError("hr_upscaler", f"unknown upscaler {name!r}",
                                    hint="see GET /sdapi/v1/upscalers for the names")
    return engine.upscalers.upscale(image, name, width, height)


def _to_pil(decoded: torch.Tensor) -> list[Image.Image]:
    arr = (decoded.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def _from_pil(images: list[Image.Image], device) -> torch.Tensor:
    arr = np.stack([np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device)


def _infotext_params(engine: Engine, model: LoadedModel, p: GenerationParams, sampler: str, scheduler: str,
                     clip_skip: int, opts, hires, second: SamplingPass | None, extra: dict,
                     cache: ConditioningCache) -> dict[str, object]:
    entry = engine.loaded_checkpoint()
    params: dict[str, object] = {
        "Steps": p.steps,
        "Sampler": sampler,
        "Schedule type": scheduler,
        "CFG scale": _number(p.cfg_scale),
        "Seed": None,
        "Size": f"{p.width}x{p.height}",
        "Model hash": engine.registry.sha256(entry)[:10] if entry else None,
        "Model": Path(entry.name).stem if entry else None,
    }
    vae = engine.vae_path
    if vae is not None:
        params["VAE hash"] = engine.hash_cache.sha256(vae, kind="vae")[:10]
        params["VAE"] = vae.name
    if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"
    if hires.enabled:
        params["Denoising strength"] = hires.denoising_strength
    if clip_skip > 1:
        params["Clip skip"] = clip_skip
    rng = _rng_source(opts)
    if rng != "GPU":
        params["RNG"] = rng
    info = find_sampler(sampler)
    if info is not None and info.uses_eta:
        eta = p.eta if p.eta is not None else (opts.eta_ancestral if info.kind != "timesteps" else None)
        if eta is not None and eta != info.eta_default:
            params["Eta DDIM" if info.kind == "timesteps" else "Eta"] = eta
    if getattr(opts, "eta_noise_seed_delta", 0) and info is not None and info.uses_ensd:
        params["ENSD"] = opts.eta_noise_seed_delta
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
            params["Hires schedule type"] = second.scheduler_name
        if hires.prompt and hires.prompt != p.prompt:
            params["Hires prompt"] = hires.prompt
        if hires.negative_prompt and hires.negative_prompt != p.negative_prompt:
            params["Hires negative prompt"] = hires.negative_prompt
        if hires.cfg_scale is not None and hires.cfg_scale != p.cfg_scale:
            params["Hires CFG Scale"] = hires.cfg_scale
    params.update(extra)
    if p.rescale_cfg > 0:  # Forge writes it whenever the slider is off zero
        params["Rescale CFG"] = p.rescale_cfg
    used = cache.used_embeddings
    if used:
        params["TI hashes"] = ", ".join(f"{name}: {emb.hash[:12]}" for name, emb in used.items())
    if any(ch in p.prompt + p.negative_prompt for ch in "()[]"):
        params["Emphasis"] = None  # "Original" emphasis is the default: the WebUI writes nothing
    params["Version"] = KILN_VERSION
    if p.notes:
        params["Notes"] = "; ".join(p.notes)
    return params
