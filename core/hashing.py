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


class HashCache:
    """JSON cache of file hashes, in A1111's cache.json shape.

    Sections ``hashes`` (whole-file SHA-256) and ``hashes-addnet`` (tensor-data SHA-256); keys are
    ``<kind>/<absolute path>``; entries ``{"mtime", "size", "sha256"}``. An entry is reused only while
    the file's mtime and size are unchanged. Each new hash is written to disk at once (atomically).
    """

    SECTIONS = {"sha256": "hashes", "addnet": "hashes-addnet"}

    def __init__(self, cache_path: str | Path | None):
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._lock = threading.Lock()
        self._data: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # a damaged cache only costs re-hashing
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _key(path: Path, kind: str) -> str:
        return f"{kind}/{path.resolve()}"

    def cached(self, path: str | Path, kind: str = "checkpoint", method: str = "sha256") -> str | None:
        """The cached hash if still valid for the file as it is now, else None (never computes)."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        with self._lock:
            entry = self._data.get(self.SECTIONS[method], {}).get(self._key(path, kind))
        if isinstance(entry, dict) and entry.get("mtime") == st.st_mtime and entry.get("size", st.st_size) == st.st_size:
            return entry.get("sha256")
        return None

    def _get(self, path: str | Path, kind: str, method: str) -> str:
        path = Path(path)
        hit = self.cached(path, kind, method)
        if hit:
            return hit
        st = path.stat()
        value = sha256_file(path) if method == "sha256" else addnet_hash_safetensors(path)
        with self._lock:
            self._data.setdefault(self.SECTIONS[method], {})[self._key(path, kind)] = {
                "mtime": st.st_mtime, "size": st.st_size, "sha256": value}
            if self.cache_path is not None:
                atomic_write_json(self.cache_path, self._data)
        return value

    def sha256(self, path: str | Path, kind: str = "checkpoint") -> str:
        """Whole-file SHA-256, computed once per file version."""
        return self._get(path, kind, "sha256")

    def addnet(self, path: str | Path, kind: str = "lora") -> str:
        """Tensor-data SHA-256 of a safetensors file, computed once per file version."""
        return self._get(path, kind, "addnet")

    def forget(self, path: str | Path, kind: str = "checkpoint") -> None:
        key = self._key(Path(path), kind)
        with self._lock:
            for section in self.SECTIONS.values():
                self._data.get(section, {}).pop(key, None)
            if self.cache_path is not None:
                atomic_write_json(self.cache_path, self._data)


def short_hash(full: str, length: int = 10) -> str:
    return full[:length]
