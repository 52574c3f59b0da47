"""Prior preservation's class pictures: the ones a reg folder lacks, made with the base model.

Each ``<repeats>_<class>/`` folder under ``reg_data_dir`` should hold ``num_class_images``
pictures; the missing ones are generated with the class prompt (the folder's class tokens, or
``class_prompt``) through the engine's txt2img and saved in the folder as
``kiln_class_<seed>.png``. The seed is ``seed + index``, so the files are a cache: a rerun counts
what is there and makes none, and a run stopped midway continues where it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.dataset.images import list_images
from core.dataset.kohya_folders import KOHYA_IMAGE_EXTENSIONS, folder_name, parse_folder_name
from core.errors import KilnError
from core.fileio import atomic_save_with
from core.training.dreambooth_config import DreamBoothConfig

PREFIX = "kiln_class_"


@dataclass(frozen=True)
class ClassFolder:
    path: Path
    prompt: str
    existing: int
    missing: int


@dataclass(frozen=True)
class ClassImageReport:
    folders: tuple[ClassFolder, ...]
    generated: int

    @property
    def total(self) -> int:
        return sum(f.existing for f in self.folders) + self.generated


def plan_class_images(config: DreamBoothConfig, *, create: bool = True) -> list[ClassFolder]:
    """The reg folders and how many pictures each lacks (none when ``num_class_images`` is 0).

    A reg folder with no concept folder yet gets ``1_<class_prompt>`` (kohya's layout); with
    ``create`` False (the UI's count) nothing is made on disk."""
    if not config.num_class_images or not config.reg_data_dir:
        return []
    root = Path(config.reg_data_dir)
    if create:
        root.mkdir(parents=True, exist_ok=True)
    subs = [p for p in sorted(root.iterdir()) if p.is_dir() and parse_folder_name(p.name)] if root.is_dir() else []
    if not subs:
        if not (config.class_prompt or "").strip():
            raise KilnError("class_prompt: the reg folder has no <repeats>_<class> folder to read a class from",
                            path=root, hint="give a class prompt (e.g. 'a photo of a dog') or make 1_dog/")
        subs = [root / folder_name(1, config.class_prompt.strip())]
        if create:
            subs[0].mkdir()
    out = []
    for sub in subs:
        prompt = (config.class_prompt or "").strip() or parse_folder_name(sub.name).class_tokens
        count = sum(1 for p in list_images(sub) if p.suffix.lower() in KOHYA_IMAGE_EXTENSIONS) if sub.is_dir() else 0
        out.append(ClassFolder(sub, prompt, count, max(0, config.num_class_images - count)))
    return out


def generate_class_images(config: DreamBoothConfig, generate: Callable[[Any], Any], *,
                          checkpoint: str | None = None, on_image: Callable[[Path], None] | None = None,
                          should_stop: Callable[[], bool] | None = None) -> ClassImageReport:
    """Fill every reg folder up to ``num_class_images``; ``generate(params)`` is the engine's txt2img
    for one GenerationParams (returns its GenerationResult)."""
    from core.generation.params import GenerationParams

    width, height = config.resolution_pair()
    folders = plan_class_images(config)
    generated = 0
    for folder in folders:
        seed = config.seed
        for _ in range(folder.missing):
            if should_stop is not None and should_stop():
                return ClassImageReport(tuple(folders), generated)
            while (folder.path / f"{PREFIX}{seed:010d}.png").exists():
                seed += 1  # a cached picture of this seed is already counted
            params = GenerationParams(prompt=folder.prompt, negative_prompt=config.class_negative_prompt,
                                      width=width, height=height, steps=config.class_infer_steps,
                                      cfg_scale=config.class_guidance_scale, seed=seed,
                                      sampler_name=config.class_sampler, save_images=False, checkpoint=checkpoint)
            image = generate(params).images[0].image
            path = folder.path / f"{PREFIX}{seed:010d}.png"
            # atomic: a kill mid-write leaves no half picture that a rerun would count
            atomic_save_with(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
            generated += 1
            seed += 1
            if on_image is not None:
                on_image(path)
    return ClassImageReport(tuple(folders), generated)
