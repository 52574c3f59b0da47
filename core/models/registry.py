"""The model files Kiln can see: scanned from the WebUI folders, named and titled as the WebUI does."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.hashing import HashCache, model_hash_old
from core.models.folders import natural_key, relative_posix, walk_files

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
HYPERNETWORK_SUFFIXES = (".safetensors", ".ckpt", ".pt")
_CHECKSUM_SUFFIX = re.compile(r"\s*\[[^]]+]\s*$")
_HEX = re.compile(r"^[0-9a-fA-F]{8,64}$")


@dataclass
class ModelEntry:
    """One model file. ``name`` is what prompts/settings use:

    - checkpoint: the path relative to its folder, with extension (``sub/model.safetensors``);
      ``title`` is ``name [sha256[:10]]`` once the hash is known, ``name`` before;
    - vae: the file name (``vae-ft-mse.safetensors``);
    - lora / embedding / hypernetwork: the file stem (``<lora:stem:1>``).
    """

    kind: str
    name: str
    path: Path
    title: str
    relative: str = ""  # path relative to the scanned folder, "/"-separated
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None


def _get(paths: Any, name: str) -> Path | None:
    value = paths.get(name) if isinstance(paths, Mapping) else getattr(paths, name, None)
    return Path(value) if value is not None else None


def scan_folder(folder: Path | None, suffixes: tuple[str, ...], *, exclude_vae: bool = False,
                only_vae: bool = False) -> list[tuple[str, Path]]:
    """(relative path, file) for every model file below ``folder`` (:func:`walk_files`, natural order)."""
    out = []
    for p in walk_files(folder, suffixes):
        is_vae = any(p.name.lower().endswith(f".vae{s}") for s in suffixes)
        if (exclude_vae and is_vae) or (only_vae and not is_vae):
            continue
        out.append((relative_posix(p, folder), p))
    return out


class ModelRegistry:
    """Lists of checkpoints, VAEs, LoRAs, embeddings and hypernetworks; hashes are computed lazily."""

    def __init__(self, paths: Any, hash_cache: HashCache | None = None):
        self.paths = paths
        self.hash_cache = hash_cache if hash_cache is not None else HashCache(None)
        self._lock = threading.RLock()
        self._entries: dict[str, list[ModelEntry]] = {}
        self.refresh()

    # ----- scanning -----

    def _checkpoint_entries(self) -> list[ModelEntry]:
        folders = [_get(self.paths, "ckpt_dir")]
        builtin = _get(self.paths, "builtin_checkpoint_dir")
        if builtin is not None and builtin not in folders:
            folders.append(builtin)  # the shipped Shapes model, when --ckpt-dir points elsewhere
        seen: dict[str, ModelEntry] = {}
        for folder in folders:
            for rel, p in scan_folder(folder, CHECKPOINT_SUFFIXES, exclude_vae=True):
                if rel not in seen:
                    entry = ModelEntry("checkpoint", rel, p, rel, rel)
                    entry.sha256 = self.hash_cache.cached(p, "checkpoint", name=rel)
                    entry.title = self._checkpoint_title(entry)
                    seen[rel] = entry
        return sorted(seen.values(), key=lambda e: natural_key(e.name))

    @staticmethod
    def _checkpoint_title(entry: ModelEntry) -> str:
        return f"{entry.name} [{entry.shorthash}]" if entry.sha256 else entry.name

    def _vae_entries(self) -> list[ModelEntry]:
        by_name: dict[str, ModelEntry] = {}
        found = scan_folder(_get(self.paths, "ckpt_dir"), CHECKPOINT_SUFFIXES, only_vae=True)
        found += scan_folder(_get(self.paths, "vae_dir"), VAE_SUFFIXES)
        for rel, p in found:
            by_name[p.name] = ModelEntry("vae", p.name, p, p.name, rel)
        return [by_name[n] for n in sorted(by_name, key=natural_key)]

    def _stem_entries(self, kind: str, folder_attr: str, suffixes: tuple[str, ...]) -> list[ModelEntry]:
        return [ModelEntry(kind, p.stem, p, p.stem, rel) for rel, p in scan_folder(_get(self.paths, folder_attr),
                                                                                   suffixes)]

    def refresh(self) -> None:
        """Rescan every folder (hashes already in the cache are kept)."""
        entries = {
            "checkpoint": self._checkpoint_entries(),
            "vae": self._vae_entries(),
            "lora": self._stem_entries("lora", "lora_dir", LORA_SUFFIXES),
            "embedding": self._stem_entries("embedding", "embeddings_dir", EMBEDDING_SUFFIXES),
            "hypernetwork": self._stem_entries("hypernetwork", "hypernetwork_dir", HYPERNETWORK_SUFFIXES),
        }
        with self._lock:
            self._entries = entries

    def checkpoints(self) -> list[ModelEntry]:
        with self._lock:
            return list(self._entries["checkpoint"])

    def vaes(self) -> list[ModelEntry]:
        with self._lock:
            return list(self._entries["vae"])

    def loras(self) -> list[ModelEntry]:
        with self._lock:
            return list(self._entries["lora"])

    def embeddings_files(self) -> list[ModelEntry]:
        with self._lock:
            return list(self._entries["embedding"])

    def hypernetworks(self) -> list[ModelEntry]:
        with self._lock:
            return list(self._entries["hypernetwork"])

    # ----- hashes -----

    def sha256(self, entry: ModelEntry) -> str:
        """Whole-file SHA-256 of ``entry`` (cached); a checkpoint's title gains its short hash."""
        entry.sha256 = self.hash_cache.sha256(entry.path, entry.kind, name=entry.name)
        if entry.kind == "checkpoint":
            entry.title = self._checkpoint_title(entry)
        return entry.sha256

    def title_with_hash(self, entry: ModelEntry) -> str:
        """``name [0123456789]`` as the WebUI shows a checkpoint, hashing the file if needed."""
        self.sha256(entry)
        return entry.title

    # ----- lookup -----

    def find_checkpoint(self, query: str | None) -> ModelEntry | None:
        """The checkpoint a WebUI user means by ``query`` (A1111 ``get_closet_checkpoint_match``):
        exact title, name, stem, name without extension, old 8-hex hash or (short/full) SHA-256;
        then the shortest title containing ``query``; then the same without a ``[hash]`` suffix."""
        if not query:
            return None
        entries = self.checkpoints()
        for e in entries:
            if query in (e.title, e.name, e.stem, e.name.rsplit(".", 1)[0], f"{e.name} [{e.shorthash}]"):
                return e
        if _HEX.match(query):
            lowered = query.lower()
            for e in entries:
                full = e.sha256 or self.sha256(e)
                if full.startswith(lowered) or model_hash_old(e.path) == lowered:
                    return e
        found = sorted((e for e in entries if query in e.title), key=lambda e: len(e.title))
        if found:
            return found[0]
        bare = _CHECKSUM_SUFFIX.sub("", query)
        found = sorted((e for e in entries if bare and bare in e.title), key=lambda e: len(e.title))
        return found[0] if found else None

    def find(self, kind: str, name: str) -> ModelEntry | None:
        """Exact lookup of a VAE / LoRA / embedding / hypernetwork by its name (or relative path)."""
        with self._lock:
            entries = list(self._entries.get(kind, []))
        for e in entries:
            if name in (e.name, e.relative, e.title):
                return e
        return None
