"""Parameters and results of one generation job, shared by the UI, the API and the engine.

Names and defaults follow the WebUI's txt2img fields (and its API's JSON names, which the
REST layer maps onto these one to one).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidParameterError

# The WebUI refuses nothing but runs out of memory; Kiln names the limit instead.
MAX_SIDE = 4096
MAX_PIXELS = 4096 * 4096
MAX_STEPS = 500
MAX_BATCH_SIZE = 64
MAX_BATCH_COUNT = 1000
MAX_SEED = 2**63 - 1 - MAX_BATCH_COUNT * MAX_BATCH_SIZE  # torch generators take 64-bit seeds; batches add to it
MAX_IMAGES = 1000  # batch count × batch size in one job (the WebUI's sliders stop at 100 × 8)
MAX_PROMPT_CHARS = 32_768  # a 75-token chunk is ~300 characters; this is ~100 chunks
# Pixels × sampler steps × pictures in one job: ~100 pictures of 1024² at 150 steps + hires.
MAX_PIXEL_STEPS = 2 * 10**12


@dataclass
class HiresParams:
    """The WebUI's "Hires. fix" section (enable_hr and the hr_* API fields)."""

    enabled: bool = False
    upscaler: str = "Latent"
    scale: float = 2.0
    resize_x: int = 0  # "Resize width to"; 0 = use scale
    resize_y: int = 0
    steps: int = 0  # 0 = same as the first pass
    denoising_strength: float = 0.7
    sampler_name: str | None = None  # None = "Use same sampler"
    scheduler: str | None = None  # None = "Use same scheduler"
    prompt: str = ""  # "" = same prompt
    negative_prompt: str = ""
    cfg_scale: float | None = None

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Second-pass size, as the WebUI computes it (resize_x/y win over scale)."""
        if self.resize_x == 0 and self.resize_y == 0:
            return int(width * self.scale) // 8 * 8, int(height * self.scale) // 8 * 8
        if self.resize_y == 0:
            w = self.resize_x
            return w // 8 * 8, int(height * w / width) // 8 * 8
        if self.resize_x == 0:
            h = self.resize_y
            return int(width * h / height) // 8 * 8, h // 8 * 8
        return self.resize_x // 8 * 8, self.resize_y // 8 * 8


@dataclass
class GenerationParams:
    """One txt2img request. ``seed == -1`` means random; ``subseed`` is the variation seed."""

    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    rescale_cfg: float = 0.0  # Forge's "Rescale CFG" (phi); 0 = off
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    batch_count: int = 1  # the API's n_iter
    batch_size: int = 1
    clip_skip: int | None = None  # None = the Settings value (CLIP_stop_at_last_layers)
    eta: float | None = None  # None = the job's option (eta_ancestral / eta_ddim)
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    s_min_uncond: float | None = None  # NGMS; None = the job's option
    hires: HiresParams = field(default_factory=HiresParams)
    checkpoint: str | None = None  # override_settings sd_model_checkpoint; None = current
    save_images: bool = True
    styles: list[str] = field(default_factory=list)
    # Set by validation, reported in the infotext like the WebUI's notes.
    notes: list[str] = field(default_factory=list)
    # Infotext keys an always-on script adds (the WebUI's p.extra_generation_params): written after
    # Kiln's own keys; a key Kiln writes itself is not replaced.
    extra_generation_params: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> GenerationParams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def total_images(self) -> int:
        return self.batch_count * self.batch_size


def validate(params: GenerationParams) -> GenerationParams:
    """Check ranges, round sizes to multiples of 8 like the WebUI, and return a clean copy.

    Raises InvalidParameterError naming the field; never lets a bad value reach torch.
    """
    p = params.replace(notes=list(params.notes), hires=dataclasses.replace(params.hires))
    for name in ("prompt", "negative_prompt"):
        value = getattr(p, name)
        if not isinstance(value, str):
            raise InvalidParameterError(name, f"must be text, got {type(value).__name__}")
        if len(value) > MAX_PROMPT_CHARS:
            raise InvalidParameterError(name, f"{len(value)} characters is over the limit of {MAX_PROMPT_CHARS}")
        # Surrogates from bad decoding can't be tokenized or saved; replace them visibly.
        cleaned = value.encode("utf-8", "replace").decode("utf-8")
        if cleaned != value:
            p.notes.append(f"{name} contained invalid characters, replaced with '?'")
        setattr(p, name, cleaned)
    if not 1 <= p.steps <= MAX_STEPS:
        raise InvalidParameterError("steps", f"must be between 1 and {MAX_STEPS}, got {p.steps}")
    if not 1 <= p.batch_size <= MAX_BATCH_SIZE:
        raise InvalidParameterError("batch_size", f"must be between 1 and {MAX_BATCH_SIZE}, got {p.batch_size}")
    if not 1 <= p.batch_count <= MAX_BATCH_COUNT:
        raise InvalidParameterError("n_iter", f"batch count must be between 1 and {MAX_BATCH_COUNT}, got {p.batch_count}")
    if not 0.0 <= p.cfg_scale <= 100.0:
        raise InvalidParameterError("cfg_scale", f"must be between 0 and 100, got {p.cfg_scale}")
    if not 0.0 <= p.rescale_cfg <= 1.0:
        raise InvalidParameterError("rescale_cfg", f"must be between 0 and 1, got {p.rescale_cfg}")
    if not 0.0 <= p.subseed_strength <= 1.0:
        raise InvalidParameterError("subseed_strength", f"must be between 0 and 1, got {p.subseed_strength}")
    for name in ("cfg_scale", "rescale_cfg", "subseed_strength", "eta", "s_churn", "s_tmin", "s_tmax", "s_noise",
                 "s_min_uncond"):
        value = getattr(p, name)
        if value is not None and not math.isfinite(value):
            raise InvalidParameterError(name, f"must be a finite number, got {value}")
    for name in ("seed", "subseed"):
        value = getattr(p, name)
        if value is not None and not -1 <= int(value) <= MAX_SEED:
            raise InvalidParameterError(name, f"must be -1 (random) or between 0 and {MAX_SEED}, got {value}")
    if p.s_min_uncond is not None and p.s_min_uncond < 0:
        raise InvalidParameterError("s_min_uncond", f"must be 0 (off) or above, got {p.s_min_uncond}")
    if p.eta is not None and not 0.0 <= p.eta <= 1.0:
        raise InvalidParameterError("eta", f"must be between 0 and 1, got {p.eta}")
    if p.clip_skip is not None and not 1 <= p.clip_skip <= 12:
        raise InvalidParameterError("clip_skip", f"must be between 1 and 12, got {p.clip_skip}")
    for name in ("width", "height"):
        value = getattr(p, name)
        if value < 8:
            raise InvalidParameterError(name, f"must be at least 8, got {value}")
        if value > MAX_SIDE:
            raise InvalidParameterError(name, f"{value} is over the limit of {MAX_SIDE} pixels",
                                        hint="use Hires. fix or an upscaler for bigger images")
        if value % 8:
            rounded = value // 8 * 8
            p.notes.append(f"{name} {value} rounded down to {rounded} (must be a multiple of 8)")
            setattr(p, name, rounded)
    if p.width * p.height > MAX_PIXELS:
        raise InvalidParameterError("width", f"{p.width}x{p.height} is over the limit of {MAX_PIXELS} pixels")
    if p.total_images > MAX_IMAGES:
        raise InvalidParameterError("n_iter", f"{p.batch_count} × {p.batch_size} = {p.total_images} pictures is over "
                                    f"the limit of {MAX_IMAGES} in one job", hint="send several jobs")
    h = p.hires
    if h.enabled:
        if not 0.0 <= h.denoising_strength <= 1.0:
            raise InvalidParameterError("denoising_strength", f"must be between 0 and 1, got {h.denoising_strength}")
        if not 0 <= h.steps <= MAX_STEPS:
            raise InvalidParameterError("hr_second_pass_steps", f"must be between 0 and {MAX_STEPS}, got {h.steps}")
        if not math.isfinite(h.scale):
            raise InvalidParameterError("hr_scale", f"must be a finite number, got {h.scale}")
        if not math.isfinite(h.denoising_strength):
            raise InvalidParameterError("denoising_strength", f"must be a finite number, got {h.denoising_strength}")
        if h.scale <= 0 and h.resize_x == 0 and h.resize_y == 0:
            raise InvalidParameterError("hr_scale", f"must be positive, got {h.scale}")
        tw, th = h.target_size(p.width, p.height)
        if max(tw, th) > MAX_SIDE or tw * th > MAX_PIXELS:
            raise InvalidParameterError("hr_scale", f"hires size {tw}x{th} is over the limit of {MAX_SIDE} pixels a side")
        if tw < 8 or th < 8:
            raise InvalidParameterError("hr_scale", f"hires size {tw}x{th} is too small")
        for name in ("prompt", "negative_prompt"):
            if len(getattr(h, name) or "") > MAX_PROMPT_CHARS:
                raise InvalidParameterError(f"hr_{name}", f"is over the limit of {MAX_PROMPT_CHARS} characters")
    work = p.width * p.height * p.steps * p.total_images
    if h.enabled:
        tw, th = h.target_size(p.width, p.height)
        work += tw * th * (h.steps or p.steps) * p.total_images
    if work > MAX_PIXEL_STEPS:
        raise InvalidParameterError("steps", f"this job is {work:.2e} pixel-steps, over the limit of "
                                    f"{MAX_PIXEL_STEPS:.0e} for one job", hint="fewer pictures, steps or pixels per job")
    return p


@dataclass
class GeneratedImage:
    image: Any  # PIL.Image.Image
    seed: int
    subseed: int
    infotext: str
    path: str | None = None  # where it was saved, if saved


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    params: GenerationParams
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    inpainting_conditioning: bool = False  # an inpainting checkpoint got mask + masked-image latents

    @property
    def infotexts(self) -> list[str]:
        return [g.infotext for g in self.images]
