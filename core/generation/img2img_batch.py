"""img2img "Batch" (the WebUI's batch-from-directory): every picture of a folder through img2img.

Input folder → results in the output folder under each input's own name (a number is added
rather than overwrite anything, so the originals are never touched even when both folders are
the same); an optional mask folder gives each picture the mask of the same name; "PNG info"
takes the chosen fields from each input's own infotext (the prompt is appended, as the WebUI
does). A picture that cannot be read is skipped with a note naming it; the batch goes on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from core.errors import InvalidParameterError, JobInterrupted, KilnError
from core.generation.filenames import NameContext
from core.generation.img2img import Img2ImgParams, validate_img2img
from core.generation.infotext import parse_generation_parameters, read_png_infotext
from core.generation.saving import SaveOptions, save_image
from core.sampling.plan import img2img_steps

if TYPE_CHECKING:
    from core.engine import Engine
    from core.generation.run_options import RunOptions
    from core.jobs import JobContext

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif")
# The WebUI's "Parameters to take from png info" choices.
PNG_INFO_FIELDS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps", "Model hash")


@dataclass
class BatchParams:
    input_dir: str
    output_dir: str
    mask_dir: str = ""
    use_png_info: bool = False
    png_info_fields: list[str] = field(default_factory=lambda: list(PNG_INFO_FIELDS[:2]))


@dataclass
class BatchResult:
    outputs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: why"
    interrupted: bool = False
    count: int = 0  # pictures found


def batch_images(folder: str | Path) -> list[Path]:
    """The pictures directly in ``folder`` (not its subfolders), by name, hidden files left out."""
    root = Path(folder)
    return sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith(".")), key=lambda p: p.name.lower())


def check_batch(batch: BatchParams) -> list[Path]:
    """The input pictures; InvalidParameterError naming the folder field when a folder is wrong."""
    folders = {"input_dir": batch.input_dir, "output_dir": batch.output_dir, "mask_dir": batch.mask_dir}
    for name in ("input_dir", "mask_dir"):
        value = folders[name]
        if (value or name == "input_dir") and not Path(value or "").is_dir():
            raise InvalidParameterError(name, f"{value!r} is not a folder")
    if not batch.output_dir:
        raise InvalidParameterError("output_dir", "no output folder given")
    if Path(batch.output_dir).exists() and not Path(batch.output_dir).is_dir():
        raise InvalidParameterError("output_dir", f"{batch.output_dir!r} is a file, not a folder")
    unknown = set(batch.png_info_fields) - set(PNG_INFO_FIELDS)
    if unknown:
        raise InvalidParameterError("png_info_fields", f"unknown fields {sorted(unknown)}",
                                    hint=", ".join(PNG_INFO_FIELDS))
    images = batch_images(batch.input_dir)
    if not images:
        raise InvalidParameterError("input_dir", f"no pictures in {batch.input_dir!r}",
                                    hint=f"files ending in {', '.join(IMAGE_SUFFIXES)}")
    return images


def _mask_for(image: Path, mask_dir: str) -> Path | None:
    if not mask_dir:
        return None
    same = Path(mask_dir) / image.name
    if same.is_file():
        return same
    for candidate in batch_images(mask_dir):
        if candidate.stem == image.stem:
            return candidate
    return None


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise KilnError(f"not a readable picture ({type(exc).__name__})", path=path) from None


def params_for(template: Img2ImgParams, image: Image.Image, mask: Image.Image | None, infotext: str | None,
               batch: BatchParams) -> Img2ImgParams:
    """The template with this picture, its mask, and the chosen PNG-info fields."""
    p = dataclasses.replace(template, init_images=[image], mask=mask, save_images=False)
    if not (batch.use_png_info and infotext):
        return p
    parsed = {k: v for k, v in parse_generation_parameters(infotext).items() if k in batch.png_info_fields}
    changes: dict[str, Any] = {}
    if "Prompt" in parsed:
        changes["prompt"] = f"{p.prompt} {parsed['Prompt']}".strip()
    if "Negative prompt" in parsed:
        changes["negative_prompt"] = f"{p.negative_prompt} {parsed['Negative prompt']}".strip()
    for key, name, cast in (("Seed", "seed", int), ("CFG scale", "cfg_scale", float), ("Steps", "steps", int),
                            ("Sampler", "sampler_name", str)):
        if key in parsed:
            try:
                changes[name] = cast(float(parsed[key])) if cast is int else cast(parsed[key])
            except (TypeError, ValueError):
                continue
    return dataclasses.replace(p, **changes)


class _ImageProgress:
    """The batch's one progress bar across all pictures: per-picture totals are ignored."""

    def __init__(self, ctx: JobContext, prefix: str):
        self._ctx, self._prefix = ctx, prefix

    def set_total(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def set_text(self, text: str) -> None:
        self._ctx.set_text(f"{self._prefix} · {text}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def run_img2img_batch(engine: Engine, template: Img2ImgParams, batch: BatchParams, ctx: JobContext,
                      options: RunOptions | None = None) -> BatchResult:
    """worker: img2img over a folder. Progress counts every picture's steps, with an ETA for all."""
    images = check_batch(batch)
    options = options or engine.run_options()
    batch_saving = dataclasses.replace(SaveOptions.of(options), save_to_dirs=False)  # right in the output folder
    out_dir = Path(batch.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_image = (img2img_steps(template.steps, template.denoising_strength, options.img2img_fix_steps)[1] + 1) \
        * template.batch_count
    ctx.set_total(per_image * len(images), job_count=len(images) * template.batch_size * template.batch_count)
    result = BatchResult(count=len(images))
    for index, path in enumerate(images):
        prefix = f"{index + 1}/{len(images)} {path.name}"
        try:
            image = _open(path)
            mask_path = _mask_for(path, batch.mask_dir)
            mask = _open(mask_path) if mask_path is not None else None
            params = validate_img2img(params_for(template, image, mask, read_png_infotext(path), batch))
        except KilnError as exc:
            result.skipped.append(f"{path.name}: {exc.problem}")
            try:
                ctx.advance(per_image)
            except JobInterrupted:
                result.interrupted = True
                break
            continue
        done_before = ctx.job.progress.step
        try:
            generated = engine.img2img(params, _ImageProgress(ctx, prefix), options)
        except JobInterrupted:
            result.interrupted = True
            break
        # Keep the bar honest when a picture used fewer steps than planned (a skip, say).
        missing = done_before + per_image - ctx.job.progress.step
        if missing > 0 and not ctx.interrupted:
            ctx.advance(missing)
        for number, g in enumerate(generated.images):
            stem = path.stem if len(generated.images) == 1 else f"{path.stem}-{number}"
            # The input's own name, in the format and with the infotext the saving options ask for.
            saved = save_image(g.image, out_dir, NameContext(seed=g.seed), g.infotext, batch_saving,
                               forced_stem=stem).path
            result.outputs.append(str(saved))
            ctx.add_artifact("image", saved.name, path=str(saved))
        if generated.interrupted:
            result.interrupted = True
            break
    return result
