"""Model file hashes as the WebUI and kohya compute them, with an A1111-style JSON cache."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
from pathlib import Path
from typing import BinaryIO

from core.errors import ModelFileError
from core.fileio import atomic_write_json

_BLOCK = 1024 * 1024
# A1111 "old" model hash window: 64 KiB starting at 1 MiB.
_OLD_HASH_OFFSET = 0x100000
_OLD_HASH_LENGTH = 0x10000


def _hash_stream(f, h) -> str:
    for block in iter(lambda: f.read(_BLOCK), b""):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of the whole file (A1111 checkpoint/VAE/TI/hypernetwork hash); 64 hex chars."""
    with open(path, "rb") as f:
        return _hash_stream(f, hashlib.sha256())


def _addnet_hash(f: BinaryIO, size: int, path: Path | None = None) -> str:
    head = f.read(8)
    if len(head) < 8:
        raise ModelFileError("too short to be a safetensors file", path=path)
    (n,) = struct.unpack("<Q", head)
    if 8 + n > size:
        raise ModelFileError(f"safetensors header length {n} exceeds the file size {size}", path=path,
                             hint="the file is truncated; download it again")
    f.seek(8 + n)
    return _hash_stream(f, hashlib.sha256())


def addnet_hash_safetensors(path: str | Path) -> str:
    """SHA-256 of a safetensors file's tensor data only (kohya ``sshs_model_hash``): metadata-blind."""
    path = Path(path)
    with open(path, "rb") as f:
        return _addnet_hash(f, path.stat().st_size, path)


def addnet_hash_bytes(data: bytes) -> str:
    """:func:`addnet_hash_safetensors` of safetensors bytes in memory (``safetensors.torch.save``)."""
    return _addnet_hash(io.BytesIO(data), len(data))


def _old_hash(f: BinaryIO) -> str:
    f.seek(_OLD_HASH_OFFSET)
    return hashlib.sha256(f.read(_OLD_HASH_LENGTH)).hexdigest()[:8]


def model_hash_old(path: str | Path) -> str:
    """A1111's legacy 8-hex hash: SHA-256 of 64 KiB at offset 1 MiB (empty input for small files)."""
    with open(path, "rb") as f:
        return _old_hash(f)


def model_hash_old_bytes(data: bytes) -> str:
    """:func:`model_hash_old` of bytes in memory (kohya's ``addnet_hash_legacy``)."""
    return _old_hash(io.BytesIO(data))


# The WebUI's cache.json title prefixes per model kind (modules/hashes.py callers: sd_models,
# the Lora extension, textual_inversion, hypernetwork). Its VAE entries all share the title "vae"
# (whatever the file), so they cannot be trusted for a given file and are not read.
WEBUI_TITLE_PREFIXES = {"checkpoint": "checkpoint", "lora": "lora", "embedding": "textual_inversion",
                        "hypernetwork": "hypernet"}


def webui_title(kind: str, name: str | None) -> str | None:
    """The WebUI's cache.json key: ``checkpoint/<name relative to the folder>``, ``lora/<stem>``..."""
    prefix = WEBUI_TITLE_PREFIXES.get(kind)
    return f"{prefix}/{name}" if prefix and name else None


def _read_json(path: Path | None) -> dict[str, dict]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a damaged cache only costs re-hashing
    return data if isinstance(data, dict) else {}


def shared_cache_files(folders: list[Path]) -> list[Path]:
    """The cache.json of each WebUI install whose model folders Kiln reads: ``X/cache.json`` for
    ``X/models/<kind>`` (and ``X/embeddings``), where the WebUI keeps it (modules/cache.py)."""
    found = []
    for folder in folders:
        folder = Path(folder)
        root = folder.parent.parent if folder.parent.name == "models" else folder.parent
        if (root / "cache.json").is_file():
            found.append(root / "cache.json")
    return list(dict.fromkeys(found))


class HashCache:
    """JSON cache of file hashes, in the WebUI's cache.json layout, shared with a WebUI's.

    Sections ``hashes`` (whole-file SHA-256) and ``hashes-addnet`` (tensor-data SHA-256); other
    sections of the file (the WebUI's ``safetensors-metadata``...) are kept as they are. Keys are
    the WebUI's titles (``checkpoint/sub/model.safetensors``, ``lora/<stem>``...) when the caller
    names the file, else ``<kind>/<absolute path>``; entries ``{"mtime", "sha256"}`` plus Kiln's
    ``size``. An entry is reused only while the file's mtime (and size, where stored) is unchanged.
    ``shared_paths``: other cache.json files (a WebUI's, next to a models folder Kiln reads) whose
    entries are reused but never written. Each new hash is written to disk at once (atomically).
    """

    SECTIONS = {"sha256": "hashes", "addnet": "hashes-addnet"}

    def __init__(self, cache_path: str | Path | None, shared_paths: list[Path] | None = None):
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._lock = threading.Lock()
        self._data: dict[str, dict] = _read_json(self.cache_path)
        own = self.cache_path.resolve() if self.cache_path is not None else None
        self._shared = [_read_json(p) for p in dict.fromkeys(Path(p) for p in shared_paths or [])
                        if p.resolve() != own]

    @staticmethod
    def _key(path: Path, kind: str) -> str:
        return f"{kind}/{path.resolve()}"

    def _keys(self, path: Path, kind: str, name: str | None) -> list[str]:
        """Keys to look under, the one to write first: the WebUI's title, the same with a Windows
        WebUI's backslashes in the name, then Kiln's absolute-path key."""
        title = webui_title(kind, name)
        keys = [title, f"{WEBUI_TITLE_PREFIXES[kind]}/{name.replace('/', chr(92))}"] if title and name else []
        return list(dict.fromkeys([*keys, self._key(path, kind)]))

    @staticmethod
    def _valid(entry: object, st) -> str | None:
        if (isinstance(entry, dict) and entry.get("mtime") == st.st_mtime
                and entry.get("size", st.st_size) == st.st_size and isinstance(entry.get("sha256"), str)):
            return entry["sha256"]
        return None

    def cached(self, path: str | Path, kind: str = "checkpoint", method: str = "sha256",
               name: str | None = None) -> str | None:
        """The cached hash if still valid for the file as it is now, else None (never computes)."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        section = self.SECTIONS[method]
        keys = self._keys(path, kind, name)
        with self._lock:
            for data in (self._data, *self._shared):
                for key in keys:
                    hit = self._valid(data.get(section, {}).get(key), st)
                    if hit:
                        return hit
        return None

    def _get(self, path: str | Path, kind: str, method: str, name: str | None) -> str:
        path = Path(path)
        hit = self.cached(path, kind, method, name)
        if hit:
            return hit
        st = path.stat()
        value = sha256_file(path) if method == "sha256" else addnet_hash_safetensors(path)
        with self._lock:
            self._data.setdefault(self.SECTIONS[method], {})[self._keys(path, kind, name)[0]] = {
                "mtime": st.st_mtime, "sha256": value, "size": st.st_size}
            self._write()
        return value

    def _write(self) -> None:
        """Merge into the file as it is on disk now: a WebUI sharing the folder may have added
        entries since Kiln read it, and those are kept (ours win for the same key)."""
        if self.cache_path is None:
            return
        merged = _read_json(self.cache_path)
        for section, entries in self._data.items():
            if isinstance(entries, dict) and isinstance(merged.get(section, {}), dict):
                merged[section] = {**merged.get(section, {}), **entries}
            else:
                merged[section] = entries
        self._data = merged
        atomic_write_json(self.cache_path, merged)

    def sha256(self, path: str | Path, kind: str = "checkpoint", name: str | None = None) -> str:
        """Whole-file SHA-256, computed once per file version. ``name``: the WebUI's name of the
        file (a checkpoint's path relative to its folder, a LoRA's stem) for the WebUI's key."""
        return self._get(path, kind, "sha256", name)

    def addnet(self, path: str | Path, kind: str = "lora", name: str | None = None) -> str:
        """Tensor-data SHA-256 of a safetensors file, computed once per file version."""
        return self._get(path, kind, "addnet", name)

    def forget(self, path: str | Path, kind: str = "checkpoint", name: str | None = None) -> None:
        keys = self._keys(Path(path), kind, name)
        with self._lock:
            for section in self.SECTIONS.values():
                for key in keys:
                    self._data.get(section, {}).pop(key, None)
            if self.cache_path is not None:  # not merged: the forgotten keys must go from the file
                atomic_write_json(self.cache_path, self._data)


def short_hash(full: str, length: int = 10) -> str:
    return full[:length]
