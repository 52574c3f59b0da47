"""Extras › Upscale: scale a picture ×N or to W×H with upscaler 1, blended with upscaler 2.

The WebUI's semantics (scripts/postprocessing_upscale.py): mode 0 scales by ``upscaling_resize``;
mode 1 scales by max(W/w, H/h) so the picture covers W×H, then "crop to fit" centres it on a
W×H canvas; upscaler 1 "None" leaves the picture as it is; upscaler 2 is run on the original
too and ``Image.blend``-ed in at its visibility. The resampling itself is a callable
``upscale(image, name, width, height)`` — the Engine's ``upscale_image`` in the app (plain
resamplers and the ESRGAN folder), anything with that shape in a test or the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from core.errors import InvalidParameterError

UpscaleFn = Callable[[Image.Image, str, int, int], Image.Image]

SCALE_BY, SCALE_TO = 0, 1  # the WebUI's resize_mode values
MAX_SIDE = 8192  # the WebUI's "Scale to" slider maximum; ×N results are held to it as well
NO_UPSCALER = "None"


@dataclass(frozen=True)
class ExtrasUpscale:
    """The Extras tab's upscale settings, with the WebUI API's field names."""

    resize_mode: int = SCALE_BY
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = NO_UPSCALER
    upscaler_2: str = NO_UPSCALER
    extras_upscaler_2_visibility: float = 0.0

    def __post_init__(self) -> None:
        if self.resize_mode not in (SCALE_BY, SCALE_TO):
            raise InvalidParameterError("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {self.resize_mode}")
        if not (math.isfinite(self.upscaling_resize) and 0 < self.upscaling_resize <= 16):
            raise InvalidParameterError("upscaling_resize", f"must be > 0 and ≤ 16, got {self.upscaling_resize}")
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_SIDE:
                raise InvalidParameterError(name, f"must be between 1 and {MAX_SIDE}, got {value}")
        if not 0.0 <= self.extras_upscaler_2_visibility <= 1.0:
            raise InvalidParameterError("extras_upscaler_2_visibility",
                                        f"must be between 0 and 1, got {self.extras_upscaler_2_visibility}")

    @property
    def active(self) -> bool:
        return bool(self.upscaler_1) and self.upscaler_1 != NO_UPSCALER

    def target_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size upscaler 1 is asked for (before "crop to fit")."""
        w, h = size
        scale = (max(self.upscaling_resize_w / w, self.upscaling_resize_h / h) if self.resize_mode == SCALE_TO
                 else self.upscaling_resize)
        tw, th = max(1, int(w * scale)), max(1, int(h * scale))
        if self.resize_mode == SCALE_TO and self.upscaling_crop:  # cover W×H despite int() rounding down
            tw, th = max(tw, self.upscaling_resize_w), max(th, self.upscaling_resize_h)
        if max(tw, th) > MAX_SIDE:
            raise InvalidParameterError("upscaling_resize", f"the result would be {tw}×{th}, larger than "
                                        f"{MAX_SIDE} px on a side", hint="pick a smaller factor or size")
        return tw, th


def extras_upscale(image: Image.Image, settings: ExtrasUpscale, upscale: UpscaleFn) -> tuple[Image.Image, dict[str, str]]:
    """The upscaled picture and the "Postprocess ..." lines the WebUI writes for it."""
    info: dict[str, str] = {}
    if not settings.active:
        return image, info
    size = settings.target_size(image.size)
    out = upscale(image, settings.upscaler_1, *size).convert("RGB")
    info["Postprocess upscaler"] = settings.upscaler_1
    if settings.resize_mode == SCALE_TO:
        info["Postprocess upscale to"] = f"{settings.upscaling_resize_w}x{settings.upscaling_resize_h}"
    else:
        info["Postprocess upscale by"] = f"{settings.upscaling_resize:g}"
    if settings.upscaler_2 and settings.upscaler_2 != NO_UPSCALER and settings.extras_upscaler_2_visibility > 0:
        second = upscale(image, settings.upscaler_2, *size).convert("RGB")
        if second.size != out.size:
            second = second.resize(out.size, Image.Resampling.LANCZOS)
        out = Image.blend(out, second, settings.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = settings.upscaler_2
    if settings.resize_mode == SCALE_TO and settings.upscaling_crop:
        w, h = settings.upscaling_resize_w, settings.upscaling_resize_h
        left, top = (out.width - w) // 2, (out.height - h) // 2
        out = out.crop((left, top, left + w, top + h))
        info["Postprocess crop to"] = f"{w}x{h}"
    return out, info


def plain_upscale(image: Image.Image, name: str, width: int, height: int) -> Image.Image:
    """The resamplers that need no model (Lanczos, Nearest; "None" resamples with Lanczos as the
    WebUI's hires fix does); a model name is refused with where to get one running."""
    from core.generation.upscale import IMAGE_RESAMPLERS, resize_image

    if name not in IMAGE_RESAMPLERS:
        raise InvalidParameterError("upscaler", f"unknown upscaler {name!r}",
                                    hint=f"use one of {', '.join(IMAGE_RESAMPLERS)} or a model file in models/ESRGAN")
    return resize_image(image, name, width, height)
