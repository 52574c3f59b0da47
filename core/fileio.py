"""Atomic file writes: a crash or a full disk never leaves a half-written file behind."""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Every temp file Kiln writes is ``.<final name>.<random>.tmp`` beside its final name (older
# versions also wrote ``.<final name>.tmp``): hidden, and ignored by the model-folder scans.
TEMP_SUFFIX = ".tmp"
STALE_TEMP_AGE_S = 60.0  # a live writer links or renames its temp file within this time
# os.link errors meaning "this filesystem has no hard links" (FAT, exFAT, some network shares).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}


def _new_temp(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)


def _write_synced(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temp file in the same folder, fsync, then rename over ``path``."""

    return atomic_save_with(path, lambda tmp: _write_synced(os.open(tmp, os.O_WRONLY), data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_save_with(path: str | Path, writer) -> Path:
    """Call ``writer(tmp_path)`` (e.g. safetensors' save_file) then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temp(path)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_save_new_with(path: str | Path, writer) -> Path:
    """Call ``writer(tmp_path)``, then give the whole file the name ``path`` only if no file has it:
    FileExistsError otherwise (another writer may have taken the name meanwhile), and the temp file
    is removed. The name appears with the complete file or not at all (hard link; where the
    filesystem has none, the name is claimed with O_EXCL and the temp file renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temp(path)
    os.close(fd)
    try:
        writer(tmp)
        try:
            os.link(tmp, path)
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in _NO_HARD_LINKS:
                raise
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_many(items: Iterable[tuple[str | Path, bytes]]) -> list[Path]:
    """Replace many small files at once, all or none: every new text goes to a temp file first,
    the data reaches the disk with one ``os.sync`` (an fsync per file where there is none; one
    per file costs ~1 ms, 10 s for a 10,000-caption save), then each temp file is renamed over its
    final name. A failure while writing (disk full) removes the temp files and changes nothing."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in items:
            path = Path(path)
            fd, tmp = _new_temp(path)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if not hasattr(os, "sync"):
                    f.flush()
                    os.fsync(f.fileno())
        if hasattr(os, "sync"):
            os.sync()
    except BaseException:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    return [path for _, path in staged]


def write_new_file(folder: str | Path, names: Iterable[str], data: bytes) -> Path:
    """Write ``data`` under the first of ``names`` that ``folder`` does not have; never over a file.

    The data goes whole into a temp file (fsynced), which is then hard-linked to the name: the
    link fails if the name exists, so two writers (threads or processes) never share a name, and
    the name appears with the whole file or not at all. A crash leaves at most the temp file,
    which :func:`remove_stale_temp_files` deletes. Where the filesystem has no hard links the
    name is claimed with O_EXCL and the temp file renamed over it (a crash in between leaves an
    empty file there).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        for name in names:
            path = folder / name
            if tmp is None:
                fd, tmp = _new_temp(path)
                _write_synced(fd, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                except FileExistsError:
                    continue
                os.replace(tmp, path)
            return path
        raise FileExistsError(f"{folder}: no free file name")
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def is_temp_file_of(name: str, final_glob: str = "*") -> bool:
    """True for the name of a temp file Kiln writes before a file matching ``final_glob``."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return False
    inner = name[1 : -len(TEMP_SUFFIX)]
    return fnmatch.fnmatch(inner, final_glob) or fnmatch.fnmatch(inner.rpartition(".")[0], final_glob)


def remove_stale_temp_files(folder: str | Path, final_glob: str = "*", *, older_than_s: float = STALE_TEMP_AGE_S,
                            recursive: bool = False) -> list[Path]:
    """Delete the temp files a crashed writer left in ``folder`` (see :func:`is_temp_file_of`)
    that were last written more than ``older_than_s`` ago; returns what was removed. Other
    files, folders and links are never touched; a missing folder is no error."""
    removed: list[Path] = []
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        try:
            if recursive and entry.is_dir(follow_symlinks=False):
                removed += remove_stale_temp_files(entry.path, final_glob, older_than_s=older_than_s,
                                                   recursive=True)
            elif (is_temp_file_of(entry.name, final_glob) and entry.is_file(follow_symlinks=False)
                  and entry.stat(follow_symlinks=False).st_mtime <= cutoff):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except (FileNotFoundError, PermissionError):
            continue  # gone meanwhile (its writer finished), or not ours to delete
    return removed


def unique_path(folder: str | Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or ``stem-1``, ``stem-2``... when taken (never overwrites)."""
    folder = Path(folder)
    candidate = folder / f"{stem}{suffix}"
    n = 1
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    return candidate


def file_stamp(path: str | Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file, or None when it is missing: enough to see that it changed
    since it was read (a hand edit, a new copy) without reading it again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
