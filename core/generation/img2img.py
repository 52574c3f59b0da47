"""img2img and inpaint, top to bottom: pictures → init latent (+ mask) → sampling → decode → overlay → save.

The WebUI's ``StableDiffusionProcessingImg2Img`` on Kiln's shared pipeline. Regular checkpoints
inpaint by latent masking (the denoised latent is blended with the init latent outside the mask
after every step); inpainting checkpoints (9 U-Net input channels, detected from the tensor
shapes) also get the mask and the masked picture's latents as extra input channels. The
unmasked area of a result is the input picture, pixel for pixel (the WebUI's overlay step).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from core.errors import InvalidParameterError
from core.generation import masking, model_ops
from core.generation.cond_schedule import ConditioningCache
from core.generation.params import GeneratedImage, GenerationParams, GenerationResult, validate
from core.generation.pipeline import (
    INTERRUPTED,
    Inpainting,
    StepReporter,
    decode,
    denoise,
    from_pil,
    prompt_pass,
)
from core.generation.preview import LatentPreviewer
from core.generation.txt2img import (
    base_infotext,
    finish_infotext,
    image_rng,
    job_setup,
    keep_image,
    name_context,
    sampler_options,
)
from core.sampling.plan import img2img_steps

if TYPE_CHECKING:
    from core.generation.context import GenerationContext
    from core.jobs import JobContext

MAX_MASK_BLUR = 64
MAX_PADDING = 256


@dataclass
class Img2ImgParams(GenerationParams):
    """One img2img / inpaint request: the txt2img fields plus the WebUI's img2img ones (API defaults)."""

    init_images: list[Any] = field(default_factory=list)  # PIL images
    denoising_strength: float = 0.75
    resize_mode: int = masking.JUST_RESIZE
    image_cfg_scale: float | None = None  # InstructPix2Pix only: accepted, written, unused otherwise
    mask: Any = None  # PIL image, white = repaint
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = masking.FILL
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None  # None = the option

    @property
    def mask_blur(self) -> int | None:
        return self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None


def validate_img2img(params: Img2ImgParams) -> Img2ImgParams:
    """The txt2img checks plus img2img's own; InvalidParameterError names the field."""
    p = validate(params)
    p = dataclasses.replace(p, init_images=list(params.init_images))
    if not p.init_images:
        raise InvalidParameterError("init_images", "no init image given", hint="send at least one picture")
    for index, image in enumerate(p.init_images):
        if not isinstance(image, Image.Image):
            raise InvalidParameterError("init_images", f"item {index} is not a picture")
    if not isinstance(p.denoising_strength, (int, float)) or not (
            math.isfinite(p.denoising_strength) and 0.0 <= p.denoising_strength <= 1.0):
        raise InvalidParameterError("denoising_strength", f"must be between 0 and 1, got {p.denoising_strength}")
    if p.resize_mode not in range(len(masking.RESIZE_MODES)):
        raise InvalidParameterError("resize_mode", f"must be 0 to {len(masking.RESIZE_MODES) - 1}, got {p.resize_mode}",
                                    hint=", ".join(f"{i} {n}" for i, n in enumerate(masking.RESIZE_MODES)))
    if p.inpainting_fill not in range(len(masking.MASKED_CONTENT)):
        raise InvalidParameterError("inpainting_fill", f"must be 0 to 3, got {p.inpainting_fill}",
                                    hint=", ".join(f"{i} {n}" for i, n in enumerate(masking.MASKED_CONTENT)))
    for name, limit in (("mask_blur_x", MAX_MASK_BLUR), ("mask_blur_y", MAX_MASK_BLUR),
                        ("inpaint_full_res_padding", MAX_PADDING)):
        if not 0 <= getattr(p, name) <= limit:
            raise InvalidParameterError(name, f"must be between 0 and {limit}, got {getattr(p, name)}")
    multiplier = p.initial_noise_multiplier
    if multiplier is not None and not (math.isfinite(multiplier) and 0.0 <= multiplier <= 1.5):
        raise InvalidParameterError("initial_noise_multiplier", f"must be between 0 and 1.5, got {multiplier}")
    if p.mask is not None:
        if not isinstance(p.mask, Image.Image):
            raise InvalidParameterError("mask", "is not a picture")
        first = p.init_images[0]
        if p.mask.size != first.size:
            raise InvalidParameterError(
                "mask", f"is {p.mask.width}x{p.mask.height}, the init image {first.width}x{first.height}",
                hint="the mask must have the size of the picture it belongs to")
    if len(p.init_images) > 1:
        if len(p.init_images) > p.batch_size:
            raise InvalidParameterError("init_images", f"{len(p.init_images)} pictures for a batch size of "
                                        f"{p.batch_size}", hint="send at most batch_size pictures, or raise it")
        p = dataclasses.replace(p, batch_size=len(p.init_images))
    return p


@dataclass
class PreparedImages:
    """The init pictures and mask after the WebUI's picture steps, ready to encode."""

    images: list[Image.Image]  # processing size (or own size for latent upscale), one per batch item
    mask: Image.Image | None  # the repaint mask at processing size (after invert, blur, crop)
    overlays: list[Image.Image | None]
    paste_to: tuple[int, int, int, int] | None = None
    comments: list[str] = field(default_factory=list)
    only_masked: bool = False


def prepare_images(p: Img2ImgParams, background: str = "#ffffff") -> PreparedImages:
    width, height = p.width, p.height
    comments: list[str] = []
    mask = mask_for_overlay = None
    crop = paste_to = None
    only_masked = False
    if p.mask is not None:
        mask = masking.binary_mask(p.mask, p.mask_round)
        if p.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        mask = masking.blur_mask(mask, p.mask_blur_x, p.mask_blur_y)
        if p.inpaint_full_res:
            region = masking.crop_region(mask, p.inpaint_full_res_padding)
            if region is not None:
                mask_for_overlay = mask
                crop = masking.expand_crop_region(region, width, height, mask.width, mask.height)
                x1, y1, x2, y2 = crop
                mask = masking.resize_image(masking.RESIZE_AND_FILL, mask.crop(crop), width, height)
                paste_to = (x1, y1, x2 - x1, y2 - y1)
                only_masked = True
            else:
                mask = None
                comments.append('Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.')
        else:
            mask = masking.resize_image(p.resize_mode, mask, width, height)
            doubled = np.clip(np.asarray(mask.convert("L"), dtype=np.float32) * 2, 0, 255).astype(np.uint8)
            mask_for_overlay = Image.fromarray(doubled, mode="L")
    images, overlays = [], []
    for original in p.init_images:
        image = masking.flatten(original, background)
        if crop is None and p.resize_mode != masking.LATENT_UPSCALE:
            image = masking.resize_image(p.resize_mode, image, width, height)
        overlays.append(masking.overlay_image(image, mask_for_overlay) if mask is not None else None)
        if crop is not None:
            image = masking.resize_image(masking.RESIZE_AND_FILL, image.crop(crop), width, height)
        if mask is not None and p.inpainting_fill != masking.ORIGINAL:
            image = masking.fill(image, mask)
        images.append(image)
    if len(images) == 1:
        images, overlays = images * p.batch_size, overlays * p.batch_size
    return PreparedImages(images, mask, overlays, paste_to, comments, only_masked)


def inpainting_conditioning(model, pixels: torch.Tensor, mask: Image.Image | None, weight: float,
                            latent_size: tuple[int, int], round_mask: bool = True) -> torch.Tensor:
    """An inpainting checkpoint's extra input: [mask (1 ch), latents of the masked picture (4 ch)]."""
    if mask is not None:
        m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
        m = torch.round(m) if round_mask else m
    else:
        m = torch.ones(1, 1, *pixels.shape[-2:])
    m = m.to(pixels)
    source = pixels * 2 - 1
    masked = torch.lerp(source, source * (1.0 - m), weight)
    latents = model_ops.encode(model, (masked + 1) / 2)
    m = F.interpolate(m, size=latent_size).expand(latents.shape[0], -1, -1, -1)
    return torch.cat([m.to(latents), latents], dim=1)


def run_img2img(gc: GenerationContext, params: Img2ImgParams, ctx: JobContext) -> GenerationResult:
    p = validate_img2img(params)
    model, options = gc.model, gc.options
    spec = model.spec
    prepared = prepare_images(p, options.img2img_background_color)
    warnings: list[str] = [*p.notes, *gc.warnings, *prepared.comments]

    seed, subseed, prompt, negative, sampler, scheduler, noise_schedule, cache = job_setup(gc, p)
    sp = prompt_pass(cache, sampler, scheduler, p.steps, p.cfg_scale, prompt, negative, rescale_cfg=p.rescale_cfg,
                     **sampler_options(p, sampler, options))

    factor = model_ops.vae_downscale(model)
    latent_w, latent_h = p.width // factor, p.height // factor
    pixels = from_pil(prepared.images, model_ops.model_device(model))
    init_latent = model_ops.encode(model, pixels)
    if p.resize_mode == masking.LATENT_UPSCALE:
        init_latent = F.interpolate(init_latent, size=(latent_h, latent_w), mode="bilinear")
        pixels = F.interpolate(pixels, size=(p.height, p.width), mode="bilinear")
    keep = None
    if prepared.mask is not None:
        repaint = torch.from_numpy(masking.latent_mask(prepared.mask, latent_w, latent_h, p.mask_round))
        keep = (1.0 - repaint)[None, None].to(init_latent)
    inpainting_model = model_ops.is_inpainting(model)
    image_conditioning = None
    if inpainting_model:
        image_conditioning = inpainting_conditioning(model, pixels, prepared.mask, options.inpainting_mask_weight,
                                                     (latent_h, latent_w), p.mask_round)

    fix_steps = bool(options.img2img_fix_steps)
    steps_per_batch = img2img_steps(p.steps, p.denoising_strength, fix_steps)[1] + 1
    ctx.set_total(steps_per_batch * p.batch_count, job_count=p.total_images)
    reporter = StepReporter(ctx, LatentPreviewer(model.vae, spec.vae_scaling_factor, model_ops.latent_channels(model),
                                                   full=options.show_progress_type == "Full"))
    multiplier = options.initial_noise_multiplier if p.initial_noise_multiplier is None else p.initial_noise_multiplier
    infotext = _infotext_params(gc, p, prepared, sampler.name, scheduler, cache, multiplier, inpainting_model)
    folder = gc.output_root(options.outdir_img2img_samples)
    images: list[GeneratedImage] = []
    interrupted = False
    shape = (model_ops.latent_channels(model), latent_h, latent_w)
    batch_latent = init_latent
    for n in range(p.batch_count):
        seeds = [seed + n * p.batch_size + i for i in range(p.batch_size)]
        subseeds = [subseed + n * p.batch_size + i for i in range(p.batch_size)]
        rng = image_rng(p, gc, sampler, seeds, subseeds, shape)
        if n == 0 and keep is not None and p.inpainting_fill in (masking.LATENT_NOISE, masking.LATENT_NOTHING):
            # Done once, from the first batch's seeds, as the WebUI does in its init step.
            noise_fill = image_rng(p, gc, sampler, seeds, subseeds, shape).first().to(init_latent)
            filler = noise_fill if p.inpainting_fill == masking.LATENT_NOISE else torch.zeros_like(init_latent)
            batch_latent = init_latent * keep + filler * (1 - keep)
        noise = rng.first().to(init_latent)
        if multiplier != 1.0:
            noise = noise * multiplier
        ctx.set_text(f"Batch {n + 1} of {p.batch_count}")
        out = denoise(model, sp, noise_schedule, rng, noise, size=(p.width, p.height), reporter=reporter,
                      init_latent=batch_latent, denoising_strength=p.denoising_strength, fix_steps=fix_steps,
                      inpaint=Inpainting(keep=keep, image_conditioning=image_conditioning), autocast=gc.autocast)
        if out.latents is None:
            if out.stopped == INTERRUPTED:
                interrupted = True
                break
            continue
        for i, image in enumerate(decode(model, out.latents)):
            image = masking.apply_overlay(image, prepared.paste_to, prepared.overlays[i])
            images.append(keep_image(image, p, options, folder, prompt, infotext, seeds[i], subseeds[i], ctx,
                                     names=name_context(gc, p, prompt, seeds, i, n, p.denoising_strength)))
        if out.stopped == INTERRUPTED or ctx.interrupted:
            interrupted = True
            break
    result_params = dataclasses.replace(p, seed=seed, subseed=subseed, init_images=[], mask=None)
    return GenerationResult(images=images, params=result_params, warnings=warnings, interrupted=interrupted,
                            inpainting_conditioning=inpainting_model)


def _infotext_params(gc: GenerationContext, p: Img2ImgParams, prepared: PreparedImages, sampler: str,
                     scheduler: str, cache: ConditioningCache, noise_multiplier: float, inpainting_model: bool
                     ) -> dict[str, object]:
    """The WebUI's img2img keys: Denoising strength, Conditional mask weight, then Mask blur, Mask
    mode, Masked content, Inpaint area, Masked area padding, Noise multiplier where they apply."""
    params = base_infotext(gc, p, sampler, scheduler, cache.clip_skip, denoising_strength=p.denoising_strength,
                           mask_weight=gc.options.inpainting_mask_weight if inpainting_model else None)
    if p.image_cfg_scale is not None:
        params["Image CFG scale"] = p.image_cfg_scale
    if prepared.mask is not None:
        if p.mask_blur_x > 0 or p.mask_blur_y > 0:
            params["Mask blur"] = p.mask_blur
        if p.inpainting_mask_invert:
            params["Mask mode"] = masking.MASK_MODES[1]
        if p.inpainting_fill != masking.ORIGINAL:
            params["Masked content"] = masking.MASKED_CONTENT[p.inpainting_fill]
        if prepared.only_masked:
            params["Inpaint area"] = masking.INPAINT_AREAS[1]
            params["Masked area padding"] = p.inpaint_full_res_padding
    if noise_multiplier != 1.0:
        params["Noise multiplier"] = noise_multiplier
    return finish_infotext(params, gc, p, cache)
