"""Taggers and captioners for Dataset › Tag, the API and the CLI: which models are present, and loading one.

Where they live (the WebUI's and the tagger extensions' folders, under the data folder):

- WD14: ``models/tagger/<name>/model.onnx`` + ``selected_tags.csv``, or a Hugging Face cache
  folder ``models/tagger/models--SmilingWolf--<repo>/`` as the extensions download them;
- DeepBooru: ``models/torch_deepdanbooru/model-resnet_custom_v3.pt`` (any ``.pt`` of that layout);
- BLIP / GIT: ``models/BLIP/<name>/`` as transformers' ``save_pretrained`` writes it.

A model is named by its folder (WD14, BLIP) or file stem (DeepBooru); a path to a model folder
or file works too. "deepdanbooru" / "deepbooru" mean the first DeepBooru file, "clip" the first BLIP or
GIT folder (the WebUI's interrogate names), "blip" / "git" the first of that kind.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.dataset.taggers.common import CaptionOptions, Tagger, TagOptions, TagResult
from core.errors import KilnError

if TYPE_CHECKING:
    from core.paths import KilnPaths

__all__ = ["CaptionOptions", "ModelInfo", "TagOptions", "TagResult", "Tagger", "list_models", "load_tagger",
           "missing_model_message", "resolve_model", "TaggerCache"]

KINDS = ("wd14", "deepbooru", "blip", "git")
KIND_LABELS = {"wd14": "WD14", "deepbooru": "DeepBooru", "blip": "BLIP", "git": "GIT"}
# The WebUI's interrogate names → the kinds they may mean ("clip" is its BLIP caption + CLIP ranking)
ALIASES = {"deepdanbooru": ("deepbooru",), "deepbooru": ("deepbooru",), "clip": ("blip", "git"),
           "blip": ("blip",), "git": ("git",)}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # one of KINDS
    path: Path  # the folder (WD14, BLIP / GIT) or the .pt file (DeepBooru)

    @property
    def label(self) -> str:
        return f"{self.name} ({KIND_LABELS[self.kind]})"


def _hf_cache_name(folder: Path) -> str:
    # "models--SmilingWolf--wd-vit-tagger-v3" → "wd-vit-tagger-v3"
    return folder.name.split("--")[-1] if folder.name.startswith("models--") else folder.name


def _snapshot(folder: Path) -> Path:
    """A Hugging Face cache folder's current snapshot (refs/main, else the newest); else ``folder``."""
    snaps = folder / "snapshots"
    if not snaps.is_dir():
        return folder
    ref = folder / "refs" / "main"
    if ref.is_file():
        chosen = snaps / ref.read_text(encoding="utf-8").strip()
        if chosen.is_dir():
            return chosen
    found = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0] if found else folder


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name.lower())


def deepbooru_folders(paths: KilnPaths) -> list[Path]:
    # models/torch_deepdanbooru is where the WebUI keeps the torch port; models/DeepDanbooru is
    # the name some WebUI versions and forks use for the same file.
    return [paths.deepbooru_dir, paths.data_dir / "models" / "DeepDanbooru"]


def list_models(paths: KilnPaths) -> list[ModelInfo]:
    """Every tagger and captioner present, WD14 first, then DeepBooru, then BLIP / GIT."""
    from core.dataset.taggers import blip, wd14

    found: list[ModelInfo] = []
    for folder in _subfolders(paths.tagger_dir):
        if wd14.is_model_folder(folder):
            found.append(ModelInfo(_hf_cache_name(folder), "wd14", folder))
    seen: set[Path] = set()
    for folder in deepbooru_folders(paths):
        if folder.is_dir():
            for pt in sorted(folder.glob("*.pt")):
                if pt.resolve() not in seen:
                    seen.add(pt.resolve())
                    found.append(ModelInfo(pt.stem, "deepbooru", pt))
    for folder in _subfolders(paths.blip_dir):
        kind = blip.model_type(_snapshot(folder))
        if kind is not None:
            found.append(ModelInfo(_hf_cache_name(folder), kind, folder))
    return found


def missing_model_message(paths: KilnPaths, name: str | None = None) -> str:
    """Which files to put where, for the UI, the API and the CLI."""
    head = f"no tagger named '{name}'" if name else "no tagger or captioner is installed"
    return (f"{head}. Put a WD14 tagger's model.onnx and selected_tags.csv into {paths.tagger_dir}/<name>/ "
            f"(e.g. from SmilingWolf/wd-vit-tagger-v3), DeepBooru's model-resnet_custom_v3.pt "
            f"(AUTOMATIC1111/TorchDeepDanbooru) into {paths.deepbooru_dir}/, or a BLIP / GIT captioning "
            f"folder (config.json, model.safetensors, processor and tokenizer files, e.g. "
            f"Salesforce/blip-image-captioning-large) into {paths.blip_dir}/<name>/")


def _kind_of_path(path: Path) -> str | None:
    from core.dataset.taggers import blip, deepbooru, wd14

    if path.is_file():
        return "deepbooru" if path.suffix == ".pt" else None
    if wd14.is_model_folder(path):
        return "wd14"
    kind = blip.model_type(_snapshot(path))
    if kind is not None:
        return kind
    if deepbooru.find_model_file(path) is not None:
        return "deepbooru"
    return None


def resolve_model(name_or_path: str | Path, paths: KilnPaths) -> ModelInfo:
    """A model by name (as ``list_models`` shows it, with or without the " (WD14)" label), alias, or path."""
    text = str(name_or_path).strip()
    if not text:
        raise KilnError(missing_model_message(paths) if not list_models(paths) else "choose a tagger model")
    models = list_models(paths)
    for info in models:
        if text in (info.name, info.label):
            return info
    alias = ALIASES.get(text.lower())
    if alias is not None:
        for info in models:
            if info.kind in alias:
                return info
    candidate = Path(text).expanduser()
    if candidate.exists():
        kind = _kind_of_path(candidate)
        if kind is None:
            raise KilnError("not a tagger: a WD14 folder needs model.onnx + selected_tags.csv, DeepBooru a "
                            "model-resnet_custom_v3.pt, BLIP / GIT a transformers folder (config.json, weights, "
                            "processor)", path=candidate)
        return ModelInfo(_hf_cache_name(candidate) if candidate.is_dir() else candidate.stem, kind, candidate)
    available = ", ".join(m.name for m in models)
    raise KilnError(missing_model_message(paths, text) + (f" (installed: {available})" if available else ""))


def load_model(info: ModelInfo, device: str = "cpu") -> Tagger:
    from core.dataset.taggers.blip import CaptionModel
    from core.dataset.taggers.deepbooru import DeepBooruTagger
    from core.dataset.taggers.wd14 import WD14Tagger

    if info.kind == "wd14":
        return WD14Tagger(info.path, name=info.name, device=device)
    if info.kind == "deepbooru":
        return DeepBooruTagger(info.path, name=info.name, device=device)
    return CaptionModel(_snapshot(info.path), name=info.name, device=device)


def load_tagger(name_or_path: str | Path, paths: KilnPaths, device: str = "cpu") -> Tagger:
    """Load a tagger by name or path: the object's ``tag(images, options)`` gives TagResults."""
    return load_model(resolve_model(name_or_path, paths), device)


class TaggerCache:
    """Keeps the last used tagger loaded (they take 0.3–2 GB), so one image after another does not
    reload it; a different model replaces it. Safe to share between the queue's threads."""

    def __init__(self, paths: KilnPaths, device: str = "cpu"):
        self.paths = paths
        self.device = device
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._tagger: Tagger | None = None

    def get(self, name_or_path: str | Path) -> Tagger:
        info = resolve_model(name_or_path, self.paths)
        key = (info.kind, str(info.path.resolve()))
        with self._lock:
            if self._key != key or self._tagger is None:
                self._unload_locked()
                self._tagger = load_model(info, self.device)
                self._key = key
            return self._tagger

    def unload(self) -> int:
        with self._lock:
            had = self._tagger is not None
            self._unload_locked()
            return int(had)

    def _unload_locked(self) -> None:
        if self._tagger is not None:
            self._tagger.close()
        self._tagger, self._key = None, None
