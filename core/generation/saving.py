"""Saving generated images the WebUI's way (``modules/images.py`` save_image).

Folders and names come from the options ``save_to_dirs`` / ``directories_filename_pattern``
(``<samples dir>/[date]`` by default), ``samples_filename_pattern`` and
``save_images_add_number`` (``00012-<seed>.png`` by default); the format from
``samples_format`` (png, jpg, jpeg, webp, avif where Pillow has it) with ``jpeg_quality`` and
``webp_lossless``; the infotext goes into the PNG ``parameters`` chunk or the EXIF UserComment
(``enable_pnginfo``), and beside the picture as ``.txt`` with ``save_txt``. Unlike the WebUI, a
save never replaces a file and a crash never leaves half a picture under its name.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path
from typing import Any

from PIL import Image

from core.fileio import remove_stale_temp_files, write_new_file
from core.generation.filenames import NameContext, apply_pattern, sanitize_filename_part
from core.generation.infotext import exif_with_parameters, png_info_with_parameters
from core.settings import SAMPLE_FORMATS as IMAGE_FORMATS

MAX_FILENAME_LENGTH = 128
MAX_FILENAME_BYTES = 200
SIDECAR_SUFFIXES = ("txt",)
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
# Largest sides the formats store (the WebUI saves PNG instead, as here).
_MAX_SIDE = {"jpg": 65535, "jpeg": 65535, "webp": 16383}
_JPEG_MAX_SEGMENT = 65533  # an APP1 (EXIF) segment's most bytes, its length field included


@dataclass(frozen=True)
class SaveOptions:
    """The saving options of one job (the WebUI's names and defaults, modules/shared_options.py)."""

    samples_format: str = "png"
    jpeg_quality: int = 80
    webp_lossless: bool = False
    enable_pnginfo: bool = True
    save_txt: bool = False
    samples_filename_pattern: str = ""
    save_images_add_number: bool = True
    save_to_dirs: bool = True
    directories_filename_pattern: str = "[date]"
    directories_max_prompt_words: int = 8
    grid_format: str = "png"
    grid_save_to_dirs: bool = True

    @classmethod
    def of(cls, options: Any) -> SaveOptions:
        """The saving options out of Options / RunOptions (any object with these attributes)."""
        return cls(**{f.name: getattr(options, f.name) for f in fields(cls) if hasattr(options, f.name)})


@dataclass(frozen=True)
class SavedImage:
    path: Path
    txt_path: Path | None = None
    notes: tuple[str, ...] = ()  # what the save did differently from the options, and why


def encode_image(image: Image.Image, fmt: str, infotext: str | None, opts: SaveOptions
                 ) -> tuple[bytes, str, list[str]]:
    """(file bytes, the extension used, notes) for one picture in the asked format."""
    notes: list[str] = []
    fmt = fmt.lower()
    limit = _MAX_SIDE.get(fmt)
    if limit is not None and max(image.size) > limit:
        notes.append(f"{image.width}x{image.height} is too large for {fmt} (at most {limit} a side); saved as png")
        fmt = "png"
    info = infotext if opts.enable_pnginfo and infotext is not None else None
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", pnginfo=png_info_with_parameters(info) if info is not None else None)
        return buffer.getvalue(), fmt, notes
    kwargs: dict[str, Any] = {"quality": int(opts.jpeg_quality)}
    if fmt == "webp":
        kwargs["lossless"] = bool(opts.webp_lossless)
    if fmt in ("jpg", "jpeg", "webp") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha; the WebUI drops it for WebP too
    if info is not None:
        exif = exif_with_parameters(info)
        if fmt in ("jpg", "jpeg") and len(exif) + 2 > _JPEG_MAX_SEGMENT:
            notes.append(f"the infotext ({len(info):,} characters) does not fit a JPEG's EXIF; written to the .txt")
        else:
            kwargs["exif"] = exif
    image.save(buffer, format=_PIL_FORMAT[fmt], **kwargs)
    return buffer.getvalue(), fmt, notes


def next_sequence_number(folder: Path, basename: str = "") -> int:
    """The WebUI's ``get_next_sequence_number``: one more than the highest number that starts the
    file names (after ``basename-``) in the folder."""
    prefix = f"{basename}-" if basename else ""
    highest = -1
    if Path(folder).is_dir():
        for entry in os.scandir(folder):
            # Files only: the WebUI also counts folders, so a "2026-12-04" folder beside the
            # pictures made the next one 02027.
            if entry.name.startswith(prefix) and not entry.is_dir():
                first = os.path.splitext(entry.name[len(prefix):])[0].split("-")[0]
                if first.isdigit():
                    highest = max(highest, int(first))
    return highest + 1


def output_folder(samples_dir: Path, today: date | None = None) -> Path:
    """``<samples dir>/YYYY-MM-DD``: the folder of the default ``[date]`` pattern."""
    return Path(samples_dir) / (today or date.today()).isoformat()


def image_folder(root: Path, context: NameContext, opts: SaveOptions, *, grid: bool = False,
                 image: Image.Image | None = None) -> Path:
    """Where a picture goes: the samples (or grids) folder, or below it the folder that
    ``directories_filename_pattern`` names when ``save_to_dirs`` (``grid_save_to_dirs``) is on."""
    root = Path(root)
    if not (opts.grid_save_to_dirs if grid else opts.save_to_dirs):
        return root
    name = apply_pattern(opts.directories_filename_pattern or "[prompt_words]", context, image,
                         max_prompt_words=opts.directories_max_prompt_words).lstrip(" ").rstrip("\\ /")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    folder = root.joinpath(*[_fit(p) or "_" for p in parts]) if parts else root
    return folder


def _names(folder: Path, decoration: str, ext: str, basename: str, add_number: bool) -> Iterator[str]:
    if add_number:
        for n in itertools.count(next_sequence_number(folder, basename)):
            number = f"{n:05}" if basename == "" else f"{basename}-{n:04}"
            yield f"{_fit(number + decoration)}.{ext}"
    else:
        stem = _fit(decoration) or "image"
        yield f"{stem}.{ext}"
        for n in itertools.count(1):
            yield f"{stem}-{n}.{ext}"


def save_image(image: Image.Image, root: Path, context: NameContext, infotext: str | None,
               opts: SaveOptions, *, basename: str = "", grid: bool = False, suffix: str = "",
               forced_stem: str | None = None) -> SavedImage:
    """Save one picture under ``root`` as the WebUI's ``images.save_image`` names it (``forced_stem``:
    that name, no pattern, as its ``forced_filename``); never over an existing file (``-1``, ``-2``...
    added), whole or not at all (:func:`core.fileio.write_new_file`)."""
    data, ext, notes = encode_image(image, opts.grid_format if grid else opts.samples_format, infotext, opts)
    folder = image_folder(root, context, opts, grid=grid, image=image)
    if forced_stem is not None:
        decoration, add_number = sanitize_filename_part(forced_stem, replace_spaces=False) or "", False
    elif context.seed is None:
        pattern = ""
    elif opts.save_to_dirs:
        pattern = opts.samples_filename_pattern or "[seed]"
    else:
        pattern = opts.samples_filename_pattern or "[seed]-[prompt_spaces]"
    if forced_stem is None:
        decoration = apply_pattern(pattern, context, image, max_prompt_words=opts.directories_max_prompt_words)
        decoration = sanitize_filename_part(decoration + suffix, replace_spaces=False) or ""
        add_number = opts.save_images_add_number or decoration == ""
        if decoration and add_number:
            decoration = f"-{decoration}"
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(folder, f"*.{ext}")
    path = write_new_file(folder, _names(folder, decoration, ext, basename, add_number), data)
    txt_path = None
    if infotext is not None and (opts.save_txt or any("EXIF" in n for n in notes)):
        stem = path.stem
        txt_names = itertools.chain([f"{stem}.txt"], (f"{stem}-{n}.txt" for n in itertools.count(1)))
        txt_path = write_new_file(folder, txt_names, f"{infotext}\n".encode())
    return SavedImage(path=path, txt_path=txt_path, notes=tuple(notes))


def png_bytes(image: Image.Image, infotext: str | None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info_with_parameters(infotext) if infotext else None)
    return buffer.getvalue()


def save_png_named(image: Image.Image, folder: Path, stem: str, infotext: str | None) -> Path:
    """``<stem>.png`` in ``folder``, or ``<stem>-1.png``, ``-2``... : never over an existing file."""
    return save_image(image, folder, NameContext(), infotext, SaveOptions(save_to_dirs=False),
                      forced_stem=stem).path


def save_png(image: Image.Image, folder: Path, seed: int, prompt: str, infotext: str) -> Path:
    """``NNNNN-SEED-<prompt>.png`` right in ``folder``: the WebUI's name without subfolders."""
    return save_image(image, folder, NameContext(seed=seed, prompt=prompt), infotext,
                      SaveOptions(save_to_dirs=False)).path


def _fit(stem: str) -> str:
    """At most MAX_FILENAME_LENGTH characters and MAX_FILENAME_BYTES in UTF-8 (names of 255 bytes
    are the usual limit, and the temp file beside it adds to the name), no trailing dot or space."""
    stem = stem[:MAX_FILENAME_LENGTH]
    while len(stem.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        stem = stem[:-1]
    return stem.rstrip(" .")


def remove_stale_output_temps(folders: Iterable[Path]) -> list[Path]:
    """Start-up clean-up: the temp files crashed saves left anywhere under these output folders
    (their subfolders included) that are over a minute old. Returns what was removed."""
    removed: list[Path] = []
    for folder in dict.fromkeys(Path(f) for f in folders):
        for ext in (*IMAGE_FORMATS, *SIDECAR_SUFFIXES):
            removed += remove_stale_temp_files(folder, f"*.{ext}", recursive=True)
    return removed

