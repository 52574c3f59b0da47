"""The dataset of the WebUI's embedding and hypernetwork trainers (``PersonalizedBase``).

A folder of pictures (not walked into subfolders), each with an optional ``<stem>.txt``
caption; without one the file name is the caption, leading digits and dashes removed. Each
prompt is a random line of a template file from ``textual_inversion_templates/`` with
``[name]`` replaced by the embedding's (or hypernetwork's) name and ``[filewords]`` by the
caption, its comma-separated tags first dropped (``tag_drop_out``) and shuffled
(``shuffle_tags``) when asked. Pictures are resized to the training size (bicubic, as the
WebUI) unless ``varsize``; latents are sampled once, taken as the mean (deterministic), or
sampled anew at each use (random).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import KilnError

REPO_TEMPLATES = Path(__file__).resolve().parents[2] / "textual_inversion_templates"
LATENT_SAMPLING_METHODS = ("once", "deterministic", "random")
_NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")


def template_dirs(data_dir: Path | None = None) -> list[Path]:
    """Where template files are looked up: the data folder's own first (a WebUI folder's), then Kiln's."""
    dirs = []
    if data_dir is not None and (Path(data_dir) / "textual_inversion_templates").is_dir():
        dirs.append(Path(data_dir) / "textual_inversion_templates")
    if REPO_TEMPLATES not in dirs:
        dirs.append(REPO_TEMPLATES)
    return dirs


def list_templates(data_dir: Path | None = None) -> dict[str, Path]:
    """File name → path of every ``*.txt`` template (read afresh: a new file shows on refresh)."""
    found: dict[str, Path] = {}
    for folder in template_dirs(data_dir):
        for root, _, files in os.walk(folder, followlinks=True):
            for name in sorted(files):
                if name.lower().endswith(".txt") and name not in found:
                    found[name] = Path(root) / name
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def read_template(name: str, data_dir: Path | None = None) -> list[str]:
    templates = list_templates(data_dir)
    if name not in templates:
        raise KilnError(f"prompt template file {name!r} not found",
                        hint=f"choose one of {', '.join(templates)} (files in textual_inversion_templates/)")
    lines = [line.strip() for line in templates[name].read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise KilnError("the prompt template is empty", path=templates[name], hint="write one prompt per line")
    return lines


def caption_for(path: Path) -> str:
    """The ``<stem>.txt`` beside the picture, else the file name without leading numbers."""
    text_file = path.with_suffix(".txt")
    if text_file.is_file():
        return text_file.read_text(encoding="utf-8")
    return _NUMBERS_AT_START.sub("", path.stem)


def create_text(lines: list[str], filewords: str, name: str, rng: random.Random, shuffle_tags: bool,
                tag_drop_out: float) -> str:
    """One training prompt, the WebUI's ``create_text``."""
    text = rng.choice(lines)
    tags = filewords.split(",")
    if tag_drop_out:
        tags = [t for t in tags if rng.random() > tag_drop_out]
    if shuffle_tags:
        rng.shuffle(tags)
    return text.replace("[filewords]", ",".join(tags)).replace("[name]", name)


@dataclass(frozen=True)
class DataOptions:
    data_root: Path
    template_filename: str = "style_filewords.txt"
    width: int = 512
    height: int = 512
    varsize: bool = False
    batch_size: int = 1
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"
    repeats: int = 1  # the WebUI's training_image_repeats_per_epoch


@dataclass
class Entry:
    path: Path
    caption: str
    latent: torch.Tensor | None = None  # once / deterministic
    mean: torch.Tensor | None = None  # random: the distribution, sampled at each use
    std: torch.Tensor | None = None
    text: str | None = None  # hypernetworks: the prompt made once, unless tags are shuffled or dropped


def _pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() != ".txt")


@dataclass
class PersonalizedData:
    """Encoded pictures and the prompt maker; ``batches`` yields lists of (latent, prompt)."""

    options: DataOptions
    name: str
    lines: list[str]
    entries: list[Entry] = field(default_factory=list)

    @classmethod
    def build(cls, options: DataOptions, name: str, vae: Any, scaling_factor: float,
              generator: torch.Generator, rng: random.Random, data_dir: Path | None = None,
              fixed_text: bool = False) -> PersonalizedData:
        """``fixed_text``: the WebUI's hypernetwork trainer encodes each picture's prompt once
        (``include_cond``) and reuses it, unless ``shuffle_tags`` or ``tag_drop_out`` is on."""
        from PIL import Image

        folder = Path(options.data_root)
        if not folder.is_dir():
            raise KilnError("dataset directory doesn't exist", path=folder,
                            hint="give the folder Preprocess images wrote (pictures with .txt captions)")
        if options.latent_sampling_method not in LATENT_SAMPLING_METHODS:
            raise KilnError(f"latent sampling method must be one of {LATENT_SAMPLING_METHODS}, "
                            f"not {options.latent_sampling_method!r}")
        lines = read_template(options.template_filename, data_dir)
        data = cls(options, name, lines)
        device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
        for path in _pictures(folder):
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
            except Exception:  # not a picture: skipped as the WebUI does
                continue
            if not options.varsize:
                image = image.resize((options.width, options.height), Image.BICUBIC)
            else:  # the VAE needs sides divisible by 8
                image = image.crop((0, 0, image.width // 8 * 8, image.height // 8 * 8))
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
            with torch.no_grad():
                dist = vae.encode(pixels.unsqueeze(0).to(device, dtype)).latent_dist
            entry = Entry(path, caption_for(path))
            if fixed_text and not (options.shuffle_tags or options.tag_drop_out):
                entry.text = create_text(lines, entry.caption, name, rng, False, 0.0)
            mean, std = dist.mean[0].float().cpu(), dist.std[0].float().cpu()
            if options.latent_sampling_method == "once":
                entry.latent = (mean + std * torch.randn(mean.shape, generator=generator)) * scaling_factor
            elif options.latent_sampling_method == "deterministic":
                entry.latent = mean * scaling_factor
            else:
                entry.mean, entry.std = mean, std
            data.entries.append(entry)
        if not data.entries:
            raise KilnError("no images have been found in the dataset", path=folder,
                            hint="put .png/.jpg pictures (and their .txt captions) directly in this folder")
        if options.batch_size > len(data.entries) * options.repeats:
            raise KilnError(f"batch size {options.batch_size} is more than the {len(data.entries)} pictures",
                            path=folder, hint="lower the batch size")
        if options.varsize and options.batch_size > 1 and len({tuple(e.latent.shape if e.latent is not None
                                                                      else e.mean.shape)
                                                                for e in data.entries}) > 1:
            raise KilnError("variable size needs batch size 1 when the pictures differ in size")
        return data

    def latent(self, entry: Entry, generator: torch.Generator, scaling_factor: float) -> torch.Tensor:
        if entry.latent is not None:
            return entry.latent
        return (entry.mean + entry.std * torch.randn(entry.mean.shape, generator=generator)) * scaling_factor

    def batches(self, generator: torch.Generator, rng: random.Random, scaling_factor: float):
        """Endless batches: each pass over the (repeated) pictures in a new random order; a pass
        ends with whole batches only (the WebUI's loader drops the rest)."""
        size = self.options.batch_size
        while True:
            order = torch.randperm(len(self.entries) * self.options.repeats, generator=generator).tolist()
            order = [i % len(self.entries) for i in order]
            for start in range(0, len(order) - size + 1, size):
                picked = [self.entries[i] for i in order[start:start + size]]
                latents = torch.stack([self.latent(e, generator, scaling_factor) for e in picked])
                prompts = [e.text if e.text is not None else
                           create_text(self.lines, e.caption, self.name, rng, self.options.shuffle_tags,
                                       self.options.tag_drop_out) for e in picked]
                yield latents, prompts

    def steps_per_epoch(self, gradient_step: int) -> int:
        return max(1, len(self.entries) * self.options.repeats // self.options.batch_size // gradient_step)
