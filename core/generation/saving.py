"""Saving generated images the WebUI's way: dated folders, numbered names, infotext inside."""

from __future__ import annotations

import io
import itertools
import os
import re
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from PIL import Image

from core.fileio import remove_stale_temp_files, write_new_file
from core.generation.infotext import png_info_with_parameters

_NON_LETTERS = re.compile(r"[\s' \"\\/:*?<>|,.;\[\]{}()]+")
_INVALID_FILENAME = re.compile(r'[\\/:*?"<>|\x00-\x1f]')
_LEADING_NUMBER = re.compile(r"^(\d+)-")
MAX_PROMPT_WORDS = 8
MAX_FILENAME_LENGTH = 128
MAX_FILENAME_BYTES = 200


def prompt_words(prompt: str, limit: int = MAX_PROMPT_WORDS) -> str:
    """The WebUI's [prompt_words]: the first words of the prompt, filesystem-safe."""
    words = [w for w in _NON_LETTERS.split(prompt or "") if w]
    text = " ".join(words[:limit]) or "empty prompt"
    return _INVALID_FILENAME.sub("_", text).strip(" .")


def next_sequence_number(folder: Path) -> int:
    """One more than the highest leading number in the folder (the WebUI's numbering)."""
    highest = -1
    if folder.is_dir():
        for name in os.listdir(folder):
            m = _LEADING_NUMBER.match(name)
            if m:
                highest = max(highest, int(m.group(1)))
    return highest + 1


def output_folder(samples_dir: Path, today: date | None = None) -> Path:
    """``<samples dir>/YYYY-MM-DD``, the WebUI's default "save to a subdirectory" layout."""
    return Path(samples_dir) / (today or date.today()).isoformat()


def png_bytes(image: Image.Image, infotext: str | None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info_with_parameters(infotext) if infotext else None)
    return buffer.getvalue()


def save_png_named(image: Image.Image, folder: Path, stem: str, infotext: str | None) -> Path:
    """``<stem>.png`` in ``folder``, or ``<stem>-1.png``, ``-2``... : never over an existing file."""
    data = png_bytes(image, infotext)
    stem = _fit(_INVALID_FILENAME.sub("_", stem)) or "image"
    remove_stale_temp_files(folder, "*.png")
    return write_new_file(folder, (f"{stem}.png" if n == 0 else f"{stem}-{n}.png" for n in itertools.count()), data)


def save_png(image: Image.Image, folder: Path, seed: int, prompt: str, infotext: str) -> Path:
    """Write ``NNNNN-SEED-<prompt words>.png``; names never collide, and a crash at any moment
    leaves either the whole PNG under its name or nothing there (:func:`core.fileio.write_new_file`).
    Temp files a crashed save left in the folder are removed on the way."""
    data = png_bytes(image, infotext)
    remove_stale_temp_files(folder, "*.png")
    first, words = next_sequence_number(folder), prompt_words(prompt)
    names = (f"{_fit(f'{number:05}-{seed}-{words}')}.png" for number in itertools.count(first))
    return write_new_file(folder, names, data)


def _fit(stem: str) -> str:
    """At most MAX_FILENAME_LENGTH characters and MAX_FILENAME_BYTES in UTF-8 (names of 255 bytes
    are the usual limit, and the temp file beside it adds to the name), no trailing dot or space."""
    stem = stem[:MAX_FILENAME_LENGTH]
    while len(stem.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        stem = stem[:-1]
    return stem.rstrip(" .")


def remove_stale_output_temps(folders: Iterable[Path]) -> list[Path]:
    """Start-up clean-up: the temp files crashed saves left anywhere under these output folders
    (their dated subfolders included) that are over a minute old. Returns what was removed."""
    removed: list[Path] = []
    for folder in dict.fromkeys(Path(f) for f in folders):
        removed += remove_stale_temp_files(folder, "*.png", recursive=True)
    return removed
