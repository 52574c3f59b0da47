"""Saving generated images the WebUI's way: dated folders, numbered names, infotext inside."""

from __future__ import annotations

import io
import itertools
import os
import re
from collections.abc import Iterator
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


def _claim(candidates: Iterator[Path]) -> Path:
    """The first candidate name nobody has, taken with O_EXCL (two writers never pick the same)."""
    for path in candidates:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError("no free file name")


def _write_claimed(path: Path, data: bytes) -> None:
    """Fill a name already claimed with O_EXCL through a temp file and a rename: a crash leaves
    the whole PNG or an empty claim that the next save skips, never a half-written picture."""
    tmp = path.parent / f".{path.name}.tmp"
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


def png_bytes(image: Image.Image, infotext: str | None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info_with_parameters(infotext) if infotext else None)
    return buffer.getvalue()


def save_png_named(image: Image.Image, folder: Path, stem: str, infotext: str | None) -> Path:
    """``<stem>.png`` in ``folder``, or ``<stem>-1.png``, ``-2``... : never over an existing file."""
    folder.mkdir(parents=True, exist_ok=True)
    data = png_bytes(image, infotext)
    stem = _INVALID_FILENAME.sub("_", stem)[:MAX_FILENAME_LENGTH].rstrip(" .") or "image"
    path = _claim(folder / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png") for n in itertools.count())
    _write_claimed(path, data)
    return path


def save_png(image: Image.Image, folder: Path, seed: int, prompt: str, infotext: str) -> Path:
    """Write ``NNNNN-SEED-<prompt words>.png`` atomically; names never collide.

    The final name is claimed with O_EXCL before the data is renamed over it, so two
    workers (or two Kiln processes sharing outputs/) can't pick the same number.
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = png_bytes(image, infotext)
    first, words = next_sequence_number(folder), prompt_words(prompt)
    names = (f"{number:05}-{seed}-{words}"[:MAX_FILENAME_LENGTH].rstrip(" .") for number in itertools.count(first))
    path = _claim(folder / f"{stem}.png" for stem in names)
    _write_claimed(path, data)
    return path
