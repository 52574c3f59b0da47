"""The one walk over a model folder, as the WebUI walks its folders (``modules/util.py`` ``walk_files``).

Every list of model files (checkpoints, VAEs, LoRAs, embeddings, hypernetworks, upscalers) comes
from :func:`walk_files`: recursive, into symlinked folders too (each real folder once, so a link
loop ends), hidden files and folders left out (which also skips Kiln's own half-written
``.name.XXXX.tmp`` files), filtered by how the file name ends, case-insensitively.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> list:
    """The WebUI's list order (``natural_sort_key``): case-insensitive, numbers as numbers ("m2" < "m10")."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(text)]


def relative_posix(path: Path, folder: Path) -> str:
    """``path`` below ``folder`` as a "/"-separated string (the name lists and titles use)."""
    return path.relative_to(folder).as_posix()


def walk_files(folder: str | Path | None, suffixes: Iterable[str] | None = None, *,
               key: Callable[[Path], Any] | None = None) -> list[Path]:
    """Every file below ``folder`` whose lower-cased name ends with one of ``suffixes`` (all files
    when None; ``".vae.pt"`` works as well as ``".pt"``), sorted by ``key(path)``; by default the
    natural order of the path relative to ``folder``. A missing folder gives an empty list."""
    if folder is None:
        return []
    root = Path(folder)
    if not root.is_dir():
        return []
    endings = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    seen: set[str] = set()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or (endings is not None and not name.lower().endswith(endings)):
                continue
            path = Path(dirpath) / name
            if path.is_file():
                found.append(path)
    return sorted(found, key=key if key is not None else (lambda p: natural_key(relative_posix(p, root))))


__all__ = ["natural_key", "relative_posix", "walk_files"]
