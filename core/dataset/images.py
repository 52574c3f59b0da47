"""Reading dataset pictures the way a user's folder holds them: any format Pillow opens.

EXIF rotation is honoured, the first frame of an animation is taken, palette / CMYK / 16-bit /
grey pictures become RGB, transparency is flattened onto a chosen colour. A file that cannot be
read raises ``UnreadableImage`` naming the file and the reason, so a batch lists it and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from core.errors import KilnError

# What the WebUI's and kohya's dataset scripts pick up (kohya: IMAGE_EXTENSIONS in train_util).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".avif", ".tif", ".tiff", ".jxl")
MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit, stated here so the message names it


class UnreadableImage(KilnError):
    """An image file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """The picture files of ``folder`` sorted by name (hidden and temp files left out).

    Raises KilnError when the folder does not exist or is not a folder."""
    root = Path(folder)
    if not root.exists():
        raise KilnError("folder not found", path=root, hint="check the path; it must exist on the server")
    if not root.is_dir():
        raise KilnError("is a file, not a folder", path=root)
    if recursive:
        found = [p for p in root.rglob("*") if is_image_file(p)]
    else:  # scandir's entries know their type without a stat per file (10,000-picture folders)
        with os.scandir(root) as entries:
            found = [Path(e.path) for e in entries if not e.name.startswith(".")
                     and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()]
    return sorted(found, key=lambda p: str(p).lower())


def open_image(path: str | Path, *, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """``path`` as an upright RGB picture (see the module docstring); UnreadableImage if it can't be."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("the file is empty (0 bytes)", path=path, hint="copy the picture again")
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise UnreadableImage(f"{im.width}×{im.height} is larger than {MAX_PIXELS} pixels", path=path)
            im.seek(0)  # first frame of a GIF / APNG / WebP animation
            im = ImageOps.exif_transpose(im)
            return to_rgb(im, background)
    except UnreadableImage:
        raise
    except FileNotFoundError as exc:
        raise UnreadableImage("file not found", path=path) from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"not a picture Pillow can read ({exc})", path=path,
                              hint="re-save it as PNG or JPEG, or remove it from the folder") from exc


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB of any Pillow mode; alpha (including a palette's transparency) composited on ``background``."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits, not clip
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype("uint8"), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        flat = Image.new("RGB", im.size, background)
        flat.paste(im, mask=im.getchannel("A"))
        return flat
    return im.convert("RGB")  # CMYK (Pillow undoes Adobe's inverted JPEGs on decode), L, YCbCr, ...


def iter_images(paths: list[Path], *, background: tuple[int, int, int] = (255, 255, 255)
                ) -> Iterator[tuple[Path, Image.Image | None, Skipped | None]]:
    """Each path with its picture, or with the reason it was skipped (never raises for one file)."""
    for path in paths:
        try:
            yield path, open_image(path, background=background), None
        except UnreadableImage as exc:
            yield path, None, Skipped(path, exc.problem)
