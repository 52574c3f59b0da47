"""Hires-fix upscalers: latent interpolation modes and image resamplers, WebUI names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class LatentUpscaleMode:
    name: str
    mode: str
    antialias: bool


# Names and (mode, antialias) pairs as the WebUI's shared_items.latent_upscale_modes.
LATENT_UPSCALE_MODES: tuple[LatentUpscaleMode, ...] = (
    LatentUpscaleMode("Latent", "bilinear", False),
    LatentUpscaleMode("Latent (antialiased)", "bilinear", True),
    LatentUpscaleMode("Latent (bicubic)", "bicubic", False),
    LatentUpscaleMode("Latent (bicubic antialiased)", "bicubic", True),
    LatentUpscaleMode("Latent (nearest)", "nearest", False),
    LatentUpscaleMode("Latent (nearest-exact)", "nearest-exact", False),
)
LATENT_MODES_BY_NAME = {m.name: m for m in LATENT_UPSCALE_MODES}

# Image resamplers that need no model file (the WebUI's "None", "Lanczos", "Nearest").
IMAGE_RESAMPLERS = {"None": Image.Resampling.LANCZOS, "Lanczos": Image.Resampling.LANCZOS,
                    "Nearest": Image.Resampling.NEAREST}


def is_latent_upscaler(name: str) -> bool:
    return name in LATENT_MODES_BY_NAME


def upscale_latent(latent: torch.Tensor, name: str, width: int, height: int, factor: int) -> torch.Tensor:
    mode = LATENT_MODES_BY_NAME[name]
    size = (height // factor, width // factor)
    kwargs = {"antialias": mode.antialias} if mode.mode in ("bilinear", "bicubic") else {}
    return F.interpolate(latent.float(), size=size, mode=mode.mode, **kwargs)


def resize_image(image: Image.Image, name: str, width: int, height: int) -> Image.Image:
    """Plain resamplers; model upscalers are handled by core.generation.upscalers_model."""
    return image.resize((width, height), resample=IMAGE_RESAMPLERS[name])
