"""Caption files beside pictures (``a.png`` + ``a.txt``): read tolerantly, written atomically, backed up.

Reading follows what the WebUI and kohya tolerate: UTF-8 (with or without BOM) first, then the
common legacy encodings; the text is never rewritten in a lossy way (``read_caption`` says which
encoding it found, and a caption that was not UTF-8 is only rewritten when the user edits it).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import KilnError
from core.fileio import atomic_write_text

DEFAULT_CAPTION_EXTENSION = ".txt"  # kohya's --caption_extension default (".caption" is the other one in use)
BACKUP_FOLDER = ".kiln-caption-backups"  # inside the dataset folder: hidden, skipped by image scans
_FALLBACK_ENCODINGS = ("gb18030", "shift_jis", "cp1252")


@dataclass(frozen=True)
class Caption:
    path: Path
    text: str
    encoding: str  # "utf-8", "utf-8-sig", "gb18030", ... ; "" when the file does not exist

    @property
    def exists(self) -> bool:
        return self.encoding != ""

    @property
    def utf8(self) -> bool:
        return self.encoding in ("utf-8", "utf-8-sig", "")


def caption_path(image: str | Path, extension: str = DEFAULT_CAPTION_EXTENSION) -> Path:
    """``a.png`` → ``a.txt`` (kohya: the image's stem + caption_extension)."""
    ext = extension if extension.startswith(".") else f".{extension}"
    image = Path(image)
    return image.with_name(image.stem + ext)


def read_caption(path: str | Path) -> Caption:
    """The caption text (stripped of a trailing newline) and the encoding it was read with."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Caption(path, "", "")
    except OSError as exc:
        raise KilnError(f"cannot read the caption file ({exc.strerror})", path=path) from exc
    for encoding in ("utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8", *_FALLBACK_ENCODINGS):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return Caption(path, text.rstrip("\r\n"), encoding)
    return Caption(path, data.decode("utf-8", errors="replace").rstrip("\r\n"), "unknown")


def write_caption(path: str | Path, text: str) -> Path:
    """Replace (or create) a caption file atomically, in UTF-8 without BOM."""
    return atomic_write_text(path, text)


def split_tags(text: str) -> list[str]:
    """``"1girl, solo,  long hair"`` → ``["1girl", "solo", "long hair"]`` (empty tags dropped).

    Commas inside parentheses stay inside their tag: ``(red, blue:1.2)`` is one tag, as a prompt."""
    if not any(ch in text for ch in "([{"):  # the common case, 20× faster than the scan below
        return [tag for tag in (piece.strip() for piece in text.replace("\n", ",").split(",")) if tag]
    tags, depth, current = [], 0, []
    for ch in text.replace("\n", ","):
        if ch in "([{":
            depth += 1
        elif ch in ")]}" and depth:
            depth -= 1
        if ch == "," and depth == 0:
            tags.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    tags.append("".join(current).strip())
    return [tag for tag in tags if tag]


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)


def backup_captions(folder: str | Path, files: list[Path], *, label: str = "") -> Path | None:
    """Copy the existing ones of ``files`` into ``<folder>/.kiln-caption-backups/<timestamp>[-label]/``
    (relative layout kept) before they are rewritten; returns that folder, None if nothing existed.

    A failing copy (disk full) raises before anything was rewritten, so old captions stay intact."""
    folder = Path(folder)
    existing = [f for f in files if f.is_file()]
    if not existing:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
    target = folder / BACKUP_FOLDER / (f"{stamp}-{label}" if label else stamp)
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{target.name.split('~')[0]}~{n}")
    for f in existing:
        try:
            rel = f.resolve().relative_to(folder.resolve())
        except ValueError:
            rel = Path(f.name)
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(f, dest)
        except OSError as exc:
            raise KilnError(f"could not back up the captions ({exc.strerror}); nothing was changed",
                            path=f, hint="free some disk space and try again") from exc
    return target
