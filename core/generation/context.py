"""What a generation mode gets for one job: the patched model, the job's options, and the facts
the infotext names. The Engine builds it; txt2img / img2img never see the Engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from core.generation.run_options import RunOptions
    from core.models.checkpoint import LoadedModel


def _plain_upscale(image: Image.Image, name: str, width: int, height: int) -> Image.Image:
    from core.errors import InvalidParameterError
    from core.generation.upscale import IMAGE_RESAMPLERS, resize_image

    if name in IMAGE_RESAMPLERS:
        return resize_image(image, name, width, height)
    raise InvalidParameterError("hr_upscaler", f"unknown upscaler {name!r}",
                                hint="see GET /sdapi/v1/upscalers for the names")


@dataclass
class GenerationContext:
    model: LoadedModel  # the job's view: its VAE, its LoRAs merged for the job's duration
    options: RunOptions
    model_name: str | None = None  # infotext "Model" (file stem)
    model_hash: str | None = None  # infotext "Model hash" (10 hex)
    vae_name: str | None = None
    vae_hash: str | None = None
    embeddings: Any = None  # EmbeddingDatabase or None
    network_infotext: dict[str, object] = field(default_factory=dict)  # Lora hashes, Hypernet...
    warnings: list[str] = field(default_factory=list)
    output_root: Callable[[str], Path] = Path  # an outdir_* option → its absolute folder
    upscale_image: Callable[..., Image.Image] = _plain_upscale  # (image, name, width, height)
    autocast: bool = False
    style_prompts: tuple[str, ...] = ()  # the job's styles' prompt texts, for the [prompt_no_styles] file names
