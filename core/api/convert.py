"""Translation between the WebUI's API shapes and Kiln's own objects (pure functions).

Requests become ``GenerationParams``; results become the ``info`` JSON that
``Processed.js()`` writes in the WebUI (same keys, so clients that read ``info`` keep working).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.api.models import Txt2ImgRequest
from core.api.paste import fields_from_infotext, settings_from_infotext
from core.errors import InvalidParameterError

if TYPE_CHECKING:
    from PIL import Image

    from core.extensions.registry import ExtensionRegistry
    from core.generation.params import GenerationParams, GenerationResult
    from core.jobs import ProgressSnapshot

SAME_CHECKPOINT = ("", "Use same checkpoint")
# Keys ``create_infotext`` writes from the job's own fields; everything else in a parsed
# infotext is an "extra generation parameter" (hires, Lora hashes, ...), as in Processed.js().
FIXED_INFOTEXT_KEYS = {
    "Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed",
    "Face restoration", "Size", "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash",
    "VAE", "Variation seed", "Variation seed strength", "Seed resize from", "Conditional mask weight",
    "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "NGMS", "Tiling",
    "Version", "User",
}
_PAIR_KEY = re.compile(r"^(.*)-([12])$")
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


def _unsupported(field: str, what: str) -> InvalidParameterError:
    return InvalidParameterError(field, f"{what} is not supported by Kiln", hint="leave this field out")


def request_fields(req: Txt2ImgRequest, parse_infotext: Callable[[str], dict[str, Any]] | None) -> dict[str, Any]:
    """The request's fields after ``infotext`` filled those the client did not set (WebUI v1.10)."""
    values = req.model_dump()
    if req.infotext and parse_infotext is not None:
        parsed = parse_infotext(req.infotext)
        pasted = fields_from_infotext(parsed)
        pasted.pop("clip_skip", None)  # an option, in settings_from_infotext
        for name, value in pasted.items():
            if name not in req.model_fields_set:
                values[name] = value
        settings = settings_from_infotext(parsed)
        if settings:
            overrides = dict(values.get("override_settings") or {})
            for key, value in settings.items():
                overrides.setdefault(key, value)  # the request's own override_settings win
            values["override_settings"] = overrides
    return values


def overrides_from_request(values: dict[str, Any]) -> dict[str, Any]:
    """The request's ``override_settings`` for its one job ("Use same checkpoint" means none)."""
    overrides = dict(values.get("override_settings") or {})
    if overrides.get("sd_model_checkpoint") in SAME_CHECKPOINT:
        overrides.pop("sd_model_checkpoint")
    return overrides


def params_from_request(values: dict[str, Any], *, scripts: ExtensionRegistry | None = None) -> GenerationParams:
    """``GenerationParams`` for a txt2img request (fields as ``request_fields`` returns them).

    Raises InvalidParameterError naming the field for features Kiln does not have, so a client
    learns at once instead of getting images made without them. ``scripts``: the extensions'
    always-on scripts, which the request's ``alwayson_scripts`` run on the params.
    """
    from core.generation.params import GenerationParams, HiresParams

    def get(name: str, default: Any) -> Any:
        value = values.get(name)
        return default if value is None else value

    if values.get("restore_faces"):
        from core.generation.face_restore import FACE_RESTORE_HINT, FACE_RESTORE_REASON

        raise InvalidParameterError("restore_faces", FACE_RESTORE_REASON, hint=FACE_RESTORE_HINT)
    if values.get("tiling"):
        raise _unsupported("tiling", "tiling")
    if values.get("refiner_checkpoint") not in (None, "", "None"):
        raise _unsupported("refiner_checkpoint", "a refiner checkpoint")
    if values.get("hr_checkpoint_name") not in (None, *SAME_CHECKPOINT):
        raise _unsupported("hr_checkpoint_name", "a separate hires checkpoint")
    if values.get("script_name"):
        raise InvalidParameterError("script_name", f"script {values['script_name']!r} not found")
    if scripts is None:
        for name in values.get("alwayson_scripts") or {}:
            raise InvalidParameterError("alwayson_scripts", f"always on script {name!r} not found")

    # WebUI 1.10: "DPM++ 2M Karras" is sampler + schedule, aliases ("k_euler_a") name samplers too;
    # the request's own scheduler wins unless it is unset or "Automatic".
    from core.sampling.samplers import find_sampler, split_sampler_name

    requested = values.get("sampler_name") or values.get("sampler_index") or "Euler"
    sampler, split_schedule = split_sampler_name(requested, convert_automatic=False)
    if find_sampler(sampler) is None:
        raise InvalidParameterError("sampler_name", f"unknown sampler {requested!r}",
                                    hint="see GET /sdapi/v1/samplers for the names")
    scheduler = split_schedule if values.get("scheduler") in (None, "", "Automatic") else values["scheduler"]
    hr_sampler = values.get("hr_sampler_name")
    hr_scheduler = values.get("hr_scheduler")
    hires = HiresParams(
        enabled=bool(values.get("enable_hr")),
        upscaler=get("hr_upscaler", "Latent"),
        scale=float(get("hr_scale", 2.0)),
        resize_x=int(get("hr_resize_x", 0)),
        resize_y=int(get("hr_resize_y", 0)),
        steps=int(get("hr_second_pass_steps", 0)),
        denoising_strength=float(get("denoising_strength", 0.75)),
        sampler_name=None if hr_sampler in (None, "", "Use same sampler") else hr_sampler,
        scheduler=None if hr_scheduler in (None, "", "Use same scheduler") else hr_scheduler,
        prompt=get("hr_prompt", ""),
        negative_prompt=get("hr_negative_prompt", ""),
    )
    params = GenerationParams(
        prompt=get("prompt", ""),
        negative_prompt=get("negative_prompt", ""),
        sampler_name=sampler,
        scheduler=scheduler,
        steps=int(get("steps", 50)),
        cfg_scale=float(get("cfg_scale", 7.0)),
        rescale_cfg=float(get("rescale_cfg", 0.0)),
        width=int(get("width", 512)),
        height=int(get("height", 512)),
        seed=int(get("seed", -1)),
        subseed=int(get("subseed", -1)),
        subseed_strength=float(get("subseed_strength", 0.0)),
        # The WebUI uses -1 (and 0) for "off"; Kiln's params use 0.
        seed_resize_from_w=max(int(get("seed_resize_from_w", 0)), 0),
        seed_resize_from_h=max(int(get("seed_resize_from_h", 0)), 0),
        batch_count=int(get("n_iter", 1)),
        batch_size=int(get("batch_size", 1)),
        eta=values.get("eta"),
        s_churn=values.get("s_churn"),
        s_tmin=values.get("s_tmin"),
        s_tmax=values.get("s_tmax"),
        s_noise=values.get("s_noise"),
        s_min_uncond=values.get("s_min_uncond"),
        hires=hires,
        save_images=bool(get("save_images", False)) and not values.get("do_not_save_samples"),
        styles=list(values.get("styles") or []),
    )
    if scripts is not None:
        params = scripts.apply_scripts(params, values.get("alwayson_scripts"), "txt2img")
    return params


def img2img_params_from_request(values: dict[str, Any], *, init_images: list[Any] | None = None,
                                mask: Any = None, scripts: ExtensionRegistry | None = None) -> Any:
    """``Img2ImgParams`` for an img2img request: the txt2img mapping plus pictures and mask.

    The API sends base64 text in ``values``; the UI passes PIL pictures as ``init_images`` / ``mask``.
    """
    import dataclasses

    from core.generation.img2img import Img2ImgParams

    # The scripts run once, on the img2img params below, not on this txt2img half of them.
    base = params_from_request({**values, "enable_hr": False, "alwayson_scripts": None})
    if scripts is None:
        for name in values.get("alwayson_scripts") or {}:
            raise InvalidParameterError("alwayson_scripts", f"always on script {name!r} not found")
    if init_images is None:
        init_images = [decode_base64_image(text, "init_images") for text in values.get("init_images") or []]
        mask_text = values.get("mask")
        mask = decode_base64_image(mask_text, "mask") if isinstance(mask_text, str) and mask_text.strip() else None
    images = list(init_images)
    if values.get("latent_mask"):
        raise _unsupported("latent_mask", "a separate latent mask")
    blur = values.get("mask_blur")
    blur_x = int(blur if blur is not None else values.get("mask_blur_x") if values.get("mask_blur_x") is not None else 4)
    blur_y = int(blur if blur is not None else values.get("mask_blur_y") if values.get("mask_blur_y") is not None else 4)

    def get(name: str, default: Any) -> Any:
        value = values.get(name)
        return default if value is None else value

    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    params = Img2ImgParams(
        **fields, init_images=images, mask=mask,
        denoising_strength=float(get("denoising_strength", 0.75)), resize_mode=int(get("resize_mode", 0)),
        image_cfg_scale=values.get("image_cfg_scale"), mask_blur_x=blur_x, mask_blur_y=blur_y,
        mask_round=bool(get("mask_round", True)), inpainting_fill=int(get("inpainting_fill", 0)),
        inpaint_full_res=bool(get("inpaint_full_res", True)),
        inpaint_full_res_padding=int(get("inpaint_full_res_padding", 0)),
        inpainting_mask_invert=int(get("inpainting_mask_invert", 0)),
        initial_noise_multiplier=values.get("initial_noise_multiplier"),
    )
    if scripts is not None:
        params = scripts.apply_scripts(params, values.get("alwayson_scripts"), "img2img")
    return params


def _number(text: Any) -> Any:
    """"20" → 20, "0.7" → 0.7, anything else unchanged (extra params keep the WebUI's native types)."""
    if not isinstance(text, str):
        return text
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def extra_generation_params(parsed: dict[str, Any], infotext: str | None = None) -> dict[str, Any]:
    """The non-fixed keys of a parsed infotext; "Key-1"/"Key-2" pairs joined back to "WxH".

    With ``infotext``, keys the parser filled in as defaults (absent from the text) are left out.
    """
    extra: dict[str, Any] = {}
    pairs: dict[str, dict[str, Any]] = {}
    written = infotext.splitlines()[-1] if infotext else None
    for key, value in parsed.items():
        m = _PAIR_KEY.match(key)
        if written is not None and f"{m.group(1) if m else key}: " not in written:
            continue
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        if key in FIXED_INFOTEXT_KEYS or key.startswith(("Hires sampler", "Hires schedule", "Hires checkpoint")):
            continue
        extra[key] = _number(value)
    for key, pair in pairs.items():
        if key in FIXED_INFOTEXT_KEYS or set(pair) != {"1", "2"}:
            continue
        if str(pair["1"]) in ("0", "") and str(pair["2"]) in ("0", ""):
            continue  # the parser's default for "no hires resize"
        extra[key] = f"{pair['1']}x{pair['2']}"
    return extra


def result_info(result: GenerationResult, started_at: float | None,
                parse_infotext: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The WebUI's ``Processed.js()`` object for a finished txt2img job."""
    p = result.params
    images = result.images
    infotexts = [g.infotext for g in images]
    parsed = parse_infotext(infotexts[0]) if infotexts else {}
    seeds = [g.seed for g in images]
    subseeds = [g.subseed for g in images]
    clip_skip = parsed.get("Clip skip", p.clip_skip or 1)
    timestamp = datetime.fromtimestamp(started_at) if started_at else datetime.now()
    return {
        "prompt": p.prompt,
        "all_prompts": [p.prompt] * len(images),
        "negative_prompt": p.negative_prompt,
        "all_negative_prompts": [p.negative_prompt] * len(images),
        "seed": seeds[0] if seeds else p.seed,
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else p.subseed,
        "all_subseeds": subseeds,
        "subseed_strength": p.subseed_strength,
        "width": p.width,
        "height": p.height,
        "sampler_name": parsed.get("Sampler", p.sampler_name),
        "scheduler": parsed.get("Schedule type", p.scheduler),
        "cfg_scale": p.cfg_scale,
        "steps": p.steps,
        "batch_size": p.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": parsed.get("Model"),
        "sd_model_hash": parsed.get("Model hash"),
        "sd_vae_name": parsed.get("VAE"),
        "sd_vae_hash": parsed.get("VAE hash"),
        "seed_resize_from_w": p.seed_resize_from_w or -1,
        "seed_resize_from_h": p.seed_resize_from_h or -1,
        "denoising_strength": p.denoising_strength if hasattr(p, "init_images") else (
            p.hires.denoising_strength if p.hires.enabled else None),
        "extra_generation_params": extra_generation_params(parsed, infotexts[0] if infotexts else None),
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": list(p.styles),
        "job_timestamp": timestamp.strftime("%Y%m%d%H%M%S"),
        "clip_skip": int(_number(clip_skip)) if str(clip_skip).isdigit() else 1,
        "is_using_inpainting_conditioning": bool(getattr(result, "inpainting_conditioning", False)),
        "version": parsed.get("Version"),
        "warnings": list(result.warnings),
        "interrupted": result.interrupted,
    }


def progress_body(snap: ProgressSnapshot, encode_image: Callable[[Any], str], skip_image: bool) -> dict[str, Any]:
    """/sdapi/v1/progress for a queue snapshot; idle looks like the WebUI's idle (job_count 0)."""
    active = snap.active
    started = datetime.fromtimestamp(snap.started_at) if snap.started_at else None
    state = {
        "skipped": False,
        "interrupted": snap.state == "interrupted",
        "stopping_generation": False,
        "job": snap.description if active else "",
        "job_count": snap.job_count if active else 0,
        "job_timestamp": started.strftime("%Y%m%d%H%M%S") if started else "0",
        "job_no": snap.job_no,
        "sampling_step": snap.step,
        "sampling_steps": snap.total_steps,
        "queue_length": snap.queue_length,
        # Kiln's additions: which of the caller's jobs this is, and how many jobs run before it.
        "job_id": snap.job_id if active else None,
        "queue_position": snap.position if active else -1,
    }
    if not active:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                "textinfo": snap.textinfo or None}
    image = None
    if snap.preview is not None and not skip_image:
        image = encode_image(snap.preview)
    return {
        "progress": min(max(snap.fraction, 0.0), 1.0),
        "eta_relative": float(snap.eta_seconds or 0.0),
        "state": state,
        "current_image": image,
        "textinfo": snap.textinfo or None,
    }


def encode_png_base64(image: Image.Image, infotext: str | None = None) -> str:
    """PNG bytes as base64 text, with the infotext in the ``parameters`` chunk when given."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_image_base64(image: Image.Image, infotext: str | None, options: Any) -> str:
    """The WebUI's ``encode_pil_to_base64``: the picture in the job's ``samples_format`` (PNG with
    its ``parameters`` chunk; JPEG / WebP / AVIF with the infotext in EXIF) at ``jpeg_quality``."""
    from dataclasses import replace

    from core.generation.saving import SaveOptions, encode_image

    opts = replace(SaveOptions.of(options), enable_pnginfo=True)  # the API always sends the infotext
    if opts.samples_format == "png":
        return encode_png_base64(image, infotext)
    data, _ext, _notes = encode_image(image, opts.samples_format, infotext, opts)
    return base64.b64encode(data).decode("ascii")


def decode_base64_image(text: str, field: str = "image") -> Image.Image:
    """A base64 (optionally ``data:image/...;base64,``) image; InvalidParameterError if it isn't one."""
    from PIL import Image, UnidentifiedImageError

    from core.generation.params import MAX_PIXELS

    payload = _DATA_URL.sub("", text.strip())
    try:
        data = base64.b64decode(payload, validate=False)
        image = Image.open(io.BytesIO(data))
        # The header gives the size: refuse a picture that would unpack to gigabytes before decoding it
        # (a few KB of PNG can declare 30000×30000 pixels).
        if image.width * image.height > MAX_PIXELS:
            raise InvalidParameterError(
                field, f"the image is {image.width}×{image.height} pixels; the most Kiln accepts is "
                f"{MAX_PIXELS:,} pixels (4096×4096): make it smaller first")
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidParameterError(field, f"not a base64-encoded image ({type(exc).__name__})") from None
    return image


def info_json(info: dict[str, Any]) -> str:
    return json.dumps(info, ensure_ascii=False, default=lambda _o: None)
