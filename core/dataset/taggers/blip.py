"""BLIP and GIT captions from a local transformers folder (``models/BLIP/<name>/``).

A folder as ``save_pretrained`` writes it (``config.json``, weights, the processor and tokenizer
files), e.g. Salesforce/blip-image-captioning-large or microsoft/git-large-coco, the two kohya's
Utilities › Captioning offers. ``config.json``'s ``model_type`` says which: "blip" loads
``BlipForConditionalGeneration``, "git" ``AutoModelForCausalLM``. Nothing is ever downloaded:
``local_files_only=True`` on every load.

Generation follows kohya's make_captions.py: beam search (``num_beams``) or nucleus sampling
(``top_p``), with ``min_length`` / ``max_length`` in tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from core.dataset.images import to_rgb
from core.dataset.taggers.common import CaptionOptions, TagOptions, TagResult, with_additional
from core.errors import KilnError, ModelFileError

SUPPORTED = ("blip", "git")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def model_type(folder: str | Path) -> str | None:
    """"blip" / "git" for a usable captioning folder, None when it is not one."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file() or not any((folder / w).is_file() for w in WEIGHT_FILES):
        return None
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None
    return kind if kind in SUPPORTED else None


def is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and model_type(folder) is not None


class CaptionModel:
    """A loaded BLIP / GIT model; ``tag`` returns one caption per picture."""

    def __init__(self, folder: str | Path, *, name: str | None = None, device: str = "cpu"):
        import torch

        folder = Path(folder)
        self.folder = folder
        self.name = name or folder.name
        kind = model_type(folder)
        if kind is None:
            raise KilnError("no BLIP or GIT captioning model here: it needs config.json (model_type blip or "
                            "git), model.safetensors and the processor files", path=folder,
                            hint="download e.g. Salesforce/blip-image-captioning-large with all its files "
                            f"into {folder}")
        self.kind = kind
        from transformers import AutoModelForCausalLM, AutoProcessor, BlipForConditionalGeneration

        self.device = torch.device(device if device.startswith("cuda") and torch.cuda.is_available() else "cpu")
        # Half precision on a GPU (as kohya runs them); the CPU has no fast float16 kernels.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        cls = BlipForConditionalGeneration if kind == "blip" else AutoModelForCausalLM
        try:
            self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            self.model = cls.from_pretrained(folder, local_files_only=True, dtype=self.dtype)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"transformers cannot load this {kind.upper()} folder ({exc})", path=folder,
                                 hint="the folder needs every file of the model: config, weights, "
                                 "preprocessor_config.json and the tokenizer files") from exc
        self.model.eval().to(self.device)

    def _generate_kwargs(self, opts: CaptionOptions) -> dict:
        if opts.min_length > opts.max_length:
            raise KilnError(f"min length {opts.min_length} is above max length {opts.max_length}")
        kwargs = {"max_length": opts.max_length, "min_length": opts.min_length,
                  "repetition_penalty": opts.repetition_penalty}
        if opts.nucleus:
            kwargs.update(do_sample=True, top_p=opts.top_p, num_beams=1)
        else:
            kwargs.update(do_sample=False, num_beams=max(opts.num_beams, 1))
        return kwargs

    def captions(self, images: Sequence[Image.Image], opts: CaptionOptions | None = None) -> list[str]:
        import torch

        if not images:
            return []
        opts = opts or CaptionOptions()
        rgb = [to_rgb(im, (255, 255, 255)) for im in images]
        inputs = self.processor(images=rgb, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.inference_mode():
            out = self.model.generate(pixel_values=pixel_values, **self._generate_kwargs(opts))
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def tag(self, images: Sequence[Image.Image], options: TagOptions | None = None) -> list[TagResult]:
        options = options or TagOptions()
        return [TagResult(caption=with_additional(text, options)) for text in self.captions(images, options.caption)]

    def close(self) -> None:
        self.model = None
