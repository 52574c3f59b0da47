"""Saving generated images the WebUI's way: dated folders, numbered names, infotext inside."""

from __future__ import annotations

import io
import os
import re
from datetime import date
from pathlib import Path

from PIL import Image

from core.generation.infotext import png_info_with_parameters

_NON_LETTERS = re.compile(r"[\s' \"\\/:*?<>|,.;\[\]{}()]+")
_INVALID_FILENAME = re.compile(r'[\\/:*?"<>|\x00-\x1f]')
_LEADING_NUMBER = re.compile(r"^(\d+)-")
MAX_PROMPT_WORDS = 8
MAX_FILENAME_LENGTH = 128


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


def save_png(image: Image.Image, folder: Path, seed: int, prompt: str, infotext: str) -> Path:
    """Write ``NNNNN-SEED-<prompt words>.png`` atomically; names never collide.

    The final name is claimed with O_EXCL before the data is renamed over it, so two
    workers (or two Kiln processes sharing outputs/) can't pick the same number.
    """
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info_with_parameters(infotext))
    data = buffer.getvalue()
    number = next_sequence_number(folder)
    words = prompt_words(prompt)
    while True:
        stem = f"{number:05}-{seed}-{words}"[:MAX_FILENAME_LENGTH].rstrip(" .")
        path = folder / f"{stem}.png"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            number += 1
            continue
        os.close(fd)
        break
    tmp = folder / f".{stem}.png.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise
    return path
