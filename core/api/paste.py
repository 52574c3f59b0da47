"""Parsed infotext (``parse_generation_parameters``) → txt2img fields, by their API names.

Shared by the API's ``infotext`` request field and the UI's "Send to txt2img" button, so a
PNG dropped into PNG Info and a PNG's text posted to /sdapi/v1/txt2img fill the same things.
Keys and the meaning of "Use same ..." follow the WebUI's ``modules/infotext_utils.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

USE_SAME_SAMPLER = "Use same sampler"
USE_SAME_SCHEDULER = "Use same scheduler"


def _to_int(value: Any) -> int:
    return int(float(str(value).strip()))


def _to_float(value: Any) -> float:
    return float(str(value).strip())


def _to_str(value: Any) -> str:
    return str(value)


# infotext key → (API field, converter). Order is irrelevant; missing keys leave fields alone.
INFOTEXT_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "Prompt": ("prompt", _to_str),
    "Negative prompt": ("negative_prompt", _to_str),
    "Steps": ("steps", _to_int),
    "Sampler": ("sampler_name", _to_str),
    "Schedule type": ("scheduler", _to_str),
    "CFG scale": ("cfg_scale", _to_float),
    "Rescale CFG": ("rescale_cfg", _to_float),
    "Seed": ("seed", _to_int),
    "Size-1": ("width", _to_int),
    "Size-2": ("height", _to_int),
    "Variation seed": ("subseed", _to_int),
    "Variation seed strength": ("subseed_strength", _to_float),
    "Seed resize from-1": ("seed_resize_from_w", _to_int),
    "Seed resize from-2": ("seed_resize_from_h", _to_int),
    "Denoising strength": ("denoising_strength", _to_float),
    "Clip skip": ("clip_skip", _to_int),
    "Hires upscale": ("hr_scale", _to_float),
    "Hires upscaler": ("hr_upscaler", _to_str),
    "Hires steps": ("hr_second_pass_steps", _to_int),
    "Hires resize-1": ("hr_resize_x", _to_int),
    "Hires resize-2": ("hr_resize_y", _to_int),
    "Hires sampler": ("hr_sampler_name", _to_str),
    "Hires schedule type": ("hr_scheduler", _to_str),
    "Hires prompt": ("hr_prompt", _to_str),
    "Hires negative prompt": ("hr_negative_prompt", _to_str),
    "Styles array": ("styles", list),  # set by the paste when the prompts end with styles (core.styles)
    "NGMS": ("s_min_uncond", _to_float),
}


def _to_bool(value: Any) -> bool:
    return str(value).strip().lower() == "true"


# infotext key → (WebUI option, converter): pasted into the job's override_settings, as the
# WebUI's infotext_to_setting_name_mapping does, so the picture is made again the same way.
INFOTEXT_SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "Clip skip": ("CLIP_stop_at_last_layers", _to_int),
    "Schedule min sigma": ("sigma_min", _to_float),
    "Schedule max sigma": ("sigma_max", _to_float),
    "Schedule rho": ("rho", _to_float),
    "Beta schedule alpha": ("beta_dist_alpha", _to_float),
    "Beta schedule beta": ("beta_dist_beta", _to_float),
    "Discard penultimate sigma": ("always_discard_next_to_last_sigma", _to_bool),
    "SGM noise multiplier": ("sgm_noise_multiplier", _to_bool),
    "Extra noise": ("img2img_extra_noise", _to_float),
    "UniPC variant": ("uni_pc_variant", _to_str),
    "UniPC skip type": ("uni_pc_skip_type", _to_str),
    "UniPC order": ("uni_pc_order", _to_int),
    "UniPC lower order final": ("uni_pc_lower_order_final", _to_bool),
}


def settings_from_infotext(parsed: dict[str, Any]) -> dict[str, Any]:
    """The options a parsed infotext names (``override_settings`` keys); unreadable values left out."""
    settings: dict[str, Any] = {}
    for key, (name, convert) in INFOTEXT_SETTINGS.items():
        if parsed.get(key) is None:
            continue
        try:
            settings[name] = convert(parsed[key])
        except (TypeError, ValueError):
            continue
    return settings

# Keys whose presence means the image was made with Hires. fix on.
_HIRES_MARKERS = ("Hires upscale", "Hires resize-1", "Hires upscaler", "Hires steps")


def fields_from_infotext(parsed: dict[str, Any]) -> dict[str, Any]:
    """API-named fields for the values ``parsed`` holds; unreadable values are left out.

    ``enable_hr`` is set from the hires keys and ``rescale_cfg`` is 0 when the key is absent (both are
    written only when on); "Use same sampler/scheduler" become ``None``.
    ``clip_skip`` is not an API field of its own (the WebUI sends it through
    ``override_settings.CLIP_stop_at_last_layers``); callers place it where they need it.
    """
    fields: dict[str, Any] = {}
    for key, (name, convert) in INFOTEXT_FIELDS.items():
        if key not in parsed or parsed[key] is None:
            continue
        try:
            fields[name] = convert(parsed[key])
        except (TypeError, ValueError):
            continue
    if fields.get("hr_sampler_name") == USE_SAME_SAMPLER:
        fields["hr_sampler_name"] = None
    if fields.get("hr_scheduler") == USE_SAME_SCHEDULER:
        fields["hr_scheduler"] = None
    # Forge writes "Rescale CFG" only when it is on, so an infotext without it means off.
    fields.setdefault("rescale_cfg", 0.0)
    fields["enable_hr"] = any(k in parsed for k in _HIRES_MARKERS if parsed.get(k) not in (None, "", 0, "0"))
    return fields
