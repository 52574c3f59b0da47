"""The extra-networks catalog: cards for checkpoints, LoRAs, embeddings and hypernetworks.

What the WebUI's "Extra networks" panel shows, without gradio: one ``Card`` per file with its
preview (``name.png`` / ``name.preview.png``, also .jpg/.jpeg/.webp, as A1111
``ui_extra_networks.find_preview``), its type (Checkpoint, LoRA, LyCORIS, ...), the text a click puts
into the prompt, search and sort keys; plus a LoRA's training metadata (kohya ``ss_*`` keys, tabled by
core.networks.kohya) and the user
notes kept in ``name.json`` beside the model file (A1111 ``ui_extra_networks_user_metadata``).

Listing reads only safetensors headers and small embedding files, each once per file version
(path, mtime, size); a file that cannot be read becomes a card with an error line.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import KilnError, ModelFileError
from core.fileio import atomic_write_text
from core.models.folders import natural_key
from core.networks.embeddings import embedding_candidates
from core.networks.kohya import dataset_dir_rows, lora_summary, tag_frequency_rows

if TYPE_CHECKING:
    from core.engine import Engine
    from core.networks.embeddings import Embedding

CHECKPOINT, LORA, EMBEDDING, HYPERNETWORK = "checkpoint", "lora", "embedding", "hypernetwork"
KINDS = (CHECKPOINT, LORA, EMBEDDING, HYPERNETWORK)
# The WebUI's tab titles, in its order.
TAB_TITLES = {CHECKPOINT: "Checkpoints", LORA: "Lora", EMBEDDING: "Textual Inversion", HYPERNETWORK: "Hypernetworks"}
SORT_KEYS = ("name", "date_modified", "path")
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
DEFAULT_MULTIPLIER = 1.0  # A1111 opts.extra_networks_default_multiplier
# What a card says it is when it has no picture (the kinds the WebUI's users name files by).
TYPE_CHECKPOINT, TYPE_LORA, TYPE_LYCORIS = "Checkpoint", "LoRA", "LyCORIS"
TYPE_EMBEDDING, TYPE_HYPERNETWORK = "Textual Inversion", "Hypernetwork"
# network_type_from_keys results that only LyCORIS writes (DoRA: LyCORIS's dora_wd; kohya has none).
_LYCORIS_TYPES = ("LoHa", "LoKr", "IA3", "Full", "DoRA")
# A1111 network.py metadata_tags_order: these keys come first in the metadata view.
WEBUI_METADATA_ORDER = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3,
                        "ss_num_train_images": 10, "ss_tag_frequency": 20}
# User-notes keys the WebUI's Lora editor writes (ui_edit_user_metadata.py).
USER_KEYS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")


@dataclass
class Card:
    """One file as the extra-networks panel shows it."""

    kind: str
    name: str  # the name prompts use: file stem (checkpoints: relative path with extension)
    path: Path
    preview: Path | None
    search_text: str  # lower-case text the search box matches against
    sort_name: list  # natural-order key of the name
    sort_date: float  # file mtime (date modified)
    sort_path: list  # natural-order key of the path relative to its folder
    prompt_tag: str  # what a click inserts (checkpoints: the title to select)
    description: str = ""
    alias: str = ""
    sd_version: str = ""
    type_label: str = ""  # TYPE_CHECKPOINT / TYPE_LORA / TYPE_LYCORIS / TYPE_EMBEDDING / TYPE_HYPERNETWORK
    error: str | None = None

    def sort_key(self, by: str) -> Any:
        if by == "date_modified":
            return (self.sort_date, self.sort_name)
        if by == "path":
            return (self.sort_path, self.sort_name)
        return (self.sort_name, self.sort_path)


@dataclass
class EmbeddingState:
    """Embeddings of the folder against one model width: what the WebUI's /embeddings answers."""

    loaded: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, tuple[Embedding | None, str]] = field(default_factory=dict)  # name → (data, reason)
    errors: dict[str, str] = field(default_factory=dict)  # file → message
    files: dict[str, Path] = field(default_factory=dict)  # name → file
    checked_against: str = ""  # "loaded model", "checkpoint header <name>" or "" (nothing to check)


# ----------------------------------------------------------------------- helpers --

def decode_metadata(raw: dict[str, Any]) -> dict[str, Any]:
    """safetensors ``__metadata__`` with JSON values decoded (objects and lists), WebUI key order first."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out[key] = value
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                pass
    return dict(sorted(out.items(), key=lambda kv: WEBUI_METADATA_ORDER.get(kv[0], 999)))


def find_preview(path: Path) -> Path | None:
    """``name.ext`` then ``name.preview.ext`` for png/jpg/jpeg/webp, beside ``path`` (A1111 order)."""
    base = path.with_suffix("") if path.suffix else path
    for ext in PREVIEW_EXTENSIONS:
        for candidate in (Path(f"{base}.{ext}"), Path(f"{base}.preview.{ext}")):
            if candidate != path and candidate.is_file():
                return candidate
    return None


def find_description(path: Path) -> str:
    """``name.txt`` or ``name.description.txt`` beside the file (A1111 ``find_description``)."""
    base = path.with_suffix("")
    for candidate in (Path(f"{base}.txt"), Path(f"{base}.description.txt")):
        try:
            return candidate.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    return ""


def user_metadata_path(path: Path) -> Path:
    """Where the WebUI keeps a model's user notes: ``name.json`` beside it."""
    return path.with_suffix(".json")


def format_weight(value: float) -> str:
    """A multiplier as the WebUI's JavaScript prints it: ``1`` not ``1.0``, ``0.75``."""
    value = round(float(value), 4)
    return str(int(value)) if value == int(value) else repr(value)


def lora_prompt_tag(alias: str, user: dict[str, Any], default_multiplier: float = DEFAULT_MULTIPLIER) -> str:
    """``<lora:alias:W>`` plus the activation text (A1111 ``ExtraNetworksPageLora.create_item``):
    W is the card's preferred weight, else the ``extra_networks_default_multiplier`` option."""
    try:
        weight = float(user.get("preferred weight") or 0.0)
    except (TypeError, ValueError):
        weight = 0.0
    tag = f"<lora:{alias}:{format_weight(weight or default_multiplier)}>"
    activation = str(user.get("activation text") or "").strip()
    return f"{tag} {activation}" if activation else tag


def network_type_from_keys(keys: list[str]) -> str:
    """The network kind, from tensor names alone (header only, no tensor read)."""
    parts = {part for k in keys for part in k.split(".")}
    if "dora_scale" in parts:
        return "DoRA"
    if "lora_down" in parts or "lora_up" in parts:
        return "LoRA"
    if "lora_A" in parts or "lora_B" in parts:
        return "LoRA (PEFT)"
    if "hada_w1_a" in parts:
        return "LoHa"
    if any(p.startswith("lokr_w1") for p in parts):
        return "LoKr"
    if "on_input" in parts:
        return "IA3"
    if "diff" in parts:
        return "Full"
    if "oft_blocks" in parts or "oft_diag" in parts:
        return "OFT"  # BOFT too: only the tensor's rank tells them apart, and the header is not read here
    return "Unknown"


def lora_type_label(metadata: dict[str, Any], keys: list[str]) -> str:
    """TYPE_LYCORIS for files LyCORIS wrote (``ss_network_module`` lycoris.*, or LoHa / LoKr / IA3 /
    full / DoRA keys), else TYPE_LORA (kohya, PEFT, and files whose header says nothing)."""
    module = str(metadata.get("ss_network_module") or "")
    if module.startswith("lycoris") or network_type_from_keys(keys) in _LYCORIS_TYPES:
        return TYPE_LYCORIS
    return TYPE_LORA


def checkpoint_text_widths(path: Path) -> dict[str, int] | None:
    """Text-encoder widths of a checkpoint from its safetensors header (no tensor read):
    {"default": 768 | 1024} or {"clip_l": 768, "clip_g": 1280}; None when the header says nothing."""
    from core.models import architecture as arch
    from core.models.state_dict_io import read_safetensors_header

    if path.suffix.lower() != ".safetensors":
        return None
    _, header = read_safetensors_header(path)

    def width(key: str) -> int | None:
        entry = header.get(key)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        return int(shape[-1]) if shape else None

    clip_l = width(arch.SDXL_CLIP_L + "embeddings.token_embedding.weight")
    clip_g = width(arch.SDXL_CLIP_G + "token_embedding.weight")
    if clip_l and clip_g:
        return {"clip_l": clip_l, "clip_g": clip_g}
    for key in (arch.SD1_CLIP + "embeddings.token_embedding.weight",
                arch.SD1_CLIP_OLD + "embeddings.token_embedding.weight",
                arch.SD2_OPENCLIP + "token_embedding.weight",
                arch.SDXL_REFINER_CLIP_G + "token_embedding.weight"):
        found = width(key)
        if found:
            return {"default": found}
    return None


# ----------------------------------------------------------------------- catalog --

@dataclass
class _LoraInfo:
    metadata: dict[str, Any]
    keys: list[str]
    error: str | None


class NetworkCatalog:
    """Cards and metadata over an Engine's registry and folders; thread-safe, cached per file version."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.RLock()
        self._lora_info: dict[tuple, _LoraInfo] = {}
        self._embedding_files: dict[tuple, tuple[Embedding | None, str | None]] = {}

    def default_multiplier(self) -> float:
        """The weight a clicked LoRA / hypernetwork card writes (the WebUI's option of that name)."""
        options = getattr(getattr(self.engine, "settings", None), "options", None)
        return float(getattr(options, "extra_networks_default_multiplier", DEFAULT_MULTIPLIER))

    # -- folders ------------------------------------------------------------------
    def refresh(self) -> None:
        """Rescan every folder; cached file reads stay valid only for unchanged files."""
        self.engine.registry.refresh()
        with self._lock:
            self._lora_info = {k: v for k, v in self._lora_info.items() if _version(k[0]) == k}
            self._embedding_files = {k: v for k, v in self._embedding_files.items() if _version(k[0]) == k}

    def refresh_embeddings(self) -> None:
        """Reload the embedding folder, also in the loaded model's database (WebUI force_reload)."""
        with self._lock:
            self._embedding_files.clear()
        for extras in self.engine.loaded_extras():  # every device's model
            extras.refresh_embeddings(force=True)

    # -- cards --------------------------------------------------------------------
    def cards(self, kind: str, search: str = "", sort: str = "name", descending: bool = False) -> list[Card]:
        """The cards of one tab, filtered by ``search`` (every word must match) and sorted."""
        builders = {CHECKPOINT: self._checkpoint_cards, LORA: self._lora_cards,
                    EMBEDDING: self._embedding_cards, HYPERNETWORK: self._hypernetwork_cards}
        if kind not in builders:
            raise KilnError(f"unknown extra network kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
        cards = builders[kind]()
        words = search.lower().split()
        if words:
            cards = [c for c in cards if all(w in c.search_text for w in words)]
        by = sort if sort in SORT_KEYS else "name"
        return sorted(cards, key=lambda c: c.sort_key(by), reverse=bool(descending))

    def card(self, kind: str, name: str) -> Card:
        for c in self.cards(kind):
            if c.name == name:
                return c
        raise KilnError(f"{TAB_TITLES.get(kind, kind)} {name!r} not found",
                        hint="press Refresh; the file may have been moved or deleted")

    def _base_card(self, kind: str, name: str, path: Path, relative: str, prompt_tag: str, user: dict[str, Any],
                   extra_search: list[str], **fields: Any) -> Card:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        description = str(user.get("description") or "") or find_description(path)
        search = " ".join([name, relative, description, str(user.get("activation text") or ""), *extra_search])
        return Card(kind=kind, name=name, path=path, preview=find_preview(path), search_text=search.lower(),
                    sort_name=natural_key(name), sort_date=mtime, sort_path=natural_key(relative),
                    prompt_tag=prompt_tag, description=description, **fields)

    def _checkpoint_cards(self) -> list[Card]:
        cards = []
        for e in self.engine.registry.checkpoints():
            user, error = self._read_user(e.path)
            cards.append(self._base_card(CHECKPOINT, e.name, e.path, e.relative or e.name, e.title, user,
                                         [e.title], type_label=TYPE_CHECKPOINT, error=error))
        return cards

    def _lora_cards(self) -> list[Card]:
        from core.networks.lora import detect_version, network_names

        entries = self.engine.registry.loras()
        aliases = network_names(((e.name, e.path) for e in entries),
                                lambda path: self._lora(path).metadata.get("ss_output_name")).shown
        cards = []
        for e in entries:
            info = self._lora(e.path)
            user, user_error = self._read_user(e.path)
            alias = aliases[e.name]
            version = str(user.get("sd version") or "") or detect_version(info.metadata)
            extra = [alias, version, str(info.metadata.get("ss_sd_model_name") or "")]
            tag = lora_prompt_tag(alias, user, self.default_multiplier())
            cards.append(self._base_card(LORA, e.name, e.path, e.relative or e.name, tag,
                                         user, extra, alias=alias, sd_version=version,
                                         type_label=lora_type_label(info.metadata, info.keys),
                                         error=info.error or user_error))
        return cards

    def _embedding_cards(self) -> list[Card]:
        state = self.embedding_state()
        folder = Path(self.engine.paths.embeddings_dir)
        cards = []
        for name, path in state.files.items():
            user, user_error = self._read_user(path)
            error = None
            if name in state.skipped:
                error = f"skipped: {state.skipped[name][1]}"
            relative = _relative(path, folder)
            card = self._base_card(EMBEDDING, name, path, relative, name, user, [path.stem],
                                   type_label=TYPE_EMBEDDING, error=error or user_error)
            if path.suffix.lower() in (".png", ".webp") and card.preview is None:
                card.preview = path  # an image embedding is its own preview (A1111 does the same)
            cards.append(card)
        for file, message in state.errors.items():
            path = Path(file)
            cards.append(self._base_card(EMBEDDING, path.stem, path, _relative(path, folder), path.stem, {}, [],
                                         type_label=TYPE_EMBEDDING, error=message))
        return cards

    def _hypernetwork_cards(self) -> list[Card]:
        cards = []
        for e in self.engine.registry.hypernetworks():
            user, error = self._read_user(e.path)
            tag = f"<hypernet:{e.name}:{format_weight(self.default_multiplier())}>"
            cards.append(self._base_card(HYPERNETWORK, e.name, e.path, e.relative or e.name, tag, user, [],
                                         type_label=TYPE_HYPERNETWORK, error=error))
        return cards

    # -- LoRA metadata ------------------------------------------------------------
    def _lora(self, path: Path) -> _LoraInfo:
        key = _version(path)
        with self._lock:
            hit = self._lora_info.get(key)
        if hit is not None:
            return hit
        info = _read_lora_header(path)
        with self._lock:
            self._lora_info[key] = info
        return info

    def lora_metadata(self, path: Path) -> dict[str, Any]:
        """The decoded ``__metadata__`` of a LoRA file ({} for .pt files and unreadable ones)."""
        return self._lora(Path(path)).metadata

    def lora_hash(self, path: Path, metadata: dict[str, Any]) -> str:
        """Full hash as the WebUI's Lora hashes use it: ``sshs_model_hash``, else computed (cached)."""
        stored = metadata.get("sshs_model_hash")
        if isinstance(stored, str) and stored:
            return stored
        cache = self.engine.hash_cache
        # Under the WebUI's cache.json key (lora/<stem>), so a shared WebUI folder's hashes are reused.
        if path.suffix.lower() == ".safetensors":
            return cache.addnet(path, "lora", name=path.stem)
        return cache.sha256(path, "lora", name=path.stem)

    def metadata(self, kind: str, name: str) -> dict[str, Any]:
        """Everything the metadata viewer shows for one card.

        Keys: ``name``, ``path``, ``error`` (None or text), ``user`` (notes), and for a LoRA
        ``raw`` (decoded metadata), ``summary`` [(label, value)], ``tag_frequency``
        [(dir, tag, count)], ``dataset_dirs`` [(folder, repeats, images, images×repeats, kind)].
        """
        card = self.card(kind, name)
        user, user_error = self._read_user(card.path)
        out: dict[str, Any] = {"kind": kind, "name": card.name, "path": str(card.path), "user": user,
                               "error": card.error or user_error, "raw": {}, "summary": [],
                               "tag_frequency": [], "dataset_dirs": []}
        if kind != LORA:
            out["summary"] = [("File", str(card.path))]
            return out
        info = self._lora(card.path)
        try:
            full_hash = self.lora_hash(card.path, info.metadata)
        except (OSError, KilnError) as e:
            full_hash = ""
            out["error"] = out["error"] or str(e)
        try:
            size = card.path.stat().st_size
        except OSError:
            size = 0
        out["raw"] = info.metadata
        out["summary"] = lora_summary(info.metadata, sd_version=card.sd_version,
                                      network_type=network_type_from_keys(info.keys), hash12=full_hash[:12],
                                      file_size=size)
        out["tag_frequency"] = tag_frequency_rows(info.metadata)
        out["dataset_dirs"] = dataset_dir_rows(info.metadata)
        return out

    # -- user notes ---------------------------------------------------------------
    def _read_user(self, path: Path) -> tuple[dict[str, Any], str | None]:
        target = user_metadata_path(path)
        try:
            text = target.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}, None
        except OSError as e:
            return {}, f"{target}: cannot read notes ({e})"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            return {}, f"{target}: notes are not valid JSON ({e.msg}, line {e.lineno})"
        if not isinstance(data, dict):
            return {}, f"{target}: notes are not a JSON object"
        return data, None

    def read_user_metadata(self, kind: str, name: str) -> dict[str, Any]:
        """The notes in ``name.json`` beside the file ({} when there are none or they are unreadable)."""
        return self._read_user(self.card(kind, name).path)[0]

    def write_user_metadata(self, kind: str, name: str, updates: dict[str, Any]) -> dict[str, Any]:
        """Merge ``updates`` into ``name.json`` atomically; unknown keys are kept, the model file is
        never touched. A notes file that is not valid JSON is left alone (KilnError)."""
        path = self.card(kind, name).path
        current, error = self._read_user(path)
        if error:
            raise KilnError(error, hint="fix or delete that file, then save again")
        merged = {**current, **updates}
        atomic_write_text(user_metadata_path(path), json.dumps(merged, indent=4, ensure_ascii=False) + "\n")
        return merged

    # -- embeddings ---------------------------------------------------------------
    def _embedding_file(self, path: Path) -> tuple[Embedding | None, str | None]:
        from core.networks.embeddings import load_embedding

        key = _version(path)
        with self._lock:
            hit = self._embedding_files.get(key)
        if hit is not None:
            return hit
        try:
            result: tuple[Embedding | None, str | None] = (load_embedding(path), None)
        except ModelFileError as e:
            result = (None, e.message)
        except Exception as e:  # one odd file must not break the list
            result = (None, f"{path}: {type(e).__name__}: {e}")
        with self._lock:
            self._embedding_files[key] = result
        return result

    def embedding_state(self) -> EmbeddingState:
        """Loaded / skipped embeddings: the loaded model's database when a model is loaded, else the
        folder's files checked against the selected checkpoint's text-encoder widths (header only)."""
        from core.networks.embeddings import mismatch_reason

        state = EmbeddingState()
        folder = Path(self.engine.paths.embeddings_dir)
        parsed: dict[str, tuple[Embedding, Path]] = {}
        for path in embedding_candidates(folder):
            embedding, error = self._embedding_file(path)
            if error:
                state.errors[str(path)] = error
            elif embedding is not None:
                parsed.setdefault(embedding.name, (embedding, path))
        db = getattr(self.engine.extras, "embeddings", None)
        if db is not None:
            self.engine.extras.refresh_embeddings()
            state.checked_against = "loaded model"
            for name, emb in db.loaded.items():
                if emb.bundled_in is None:
                    state.loaded[name] = emb
                    state.files[name] = Path(emb.filename) if emb.filename else parsed.get(name, (None, folder))[1]
            for name, skipped in db.skipped.items():
                state.skipped[name] = (parsed.get(name, (None, None))[0], skipped.reason)
                state.files[name] = Path(skipped.filename)
            state.errors.update({k: v for k, v in db.errors.items() if k not in state.errors})
            return state
        entry = self.engine.selected_checkpoint()
        dims = self._widths(entry.path) if entry is not None else None
        if dims:
            state.checked_against = f"checkpoint header {entry.name}"
        for name, (emb, path) in parsed.items():
            state.files[name] = path
            reason = mismatch_reason(emb, dims) if dims else None
            if reason is None:
                state.loaded[name] = emb
            else:
                state.skipped[name] = (emb, reason)
        return state

    @staticmethod
    def _widths(path: Path) -> dict[str, int] | None:
        try:
            return checkpoint_text_widths(path)
        except ModelFileError:
            return None


def _version(path: Path) -> tuple:
    try:
        st = path.stat()
        return (path, st.st_mtime_ns, st.st_size)
    except OSError:
        return (path, None, None)


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.name


def _read_lora_header(path: Path) -> _LoraInfo:
    """Decoded metadata and tensor names from the header; errors become text, never exceptions."""
    if path.suffix.lower() != ".safetensors":
        return _LoraInfo({}, [], None)
    from core.models.state_dict_io import read_safetensors_header

    try:
        _, header = read_safetensors_header(path)
    except ModelFileError as e:
        return _LoraInfo({}, [], e.message)
    raw = header.get("__metadata__") or {}
    raw = {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}
    keys = [k for k in header if k != "__metadata__"]
    return _LoraInfo(decode_metadata(raw), keys, None)
