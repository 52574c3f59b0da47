"""Textual Inversion embeddings, read the way the WebUI reads them.

Formats (A1111 ``modules/textual_inversion``): the WebUI's ``.pt`` (``string_to_param``),
SDXL ``{clip_l, clip_g}``, any dict holding exactly one tensor (kohya ``emb_params``
safetensors, diffusers ``{token: [dim]}`` ``.bin``), and PNG/WebP images carrying the
embedding in an ``sd-ti-embedding`` text chunk or pixel-encoded in strips at the edges.
The folder is walked recursively; zero-byte files and ``*.preview.*`` images are skipped;
the token is the file stem (images: the ``name`` stored inside). An embedding whose width
does not fit the loaded model is listed as skipped, with the reason, not raised.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.errors import ModelFileError
from core.hashing import sha256_file
from core.models.folders import walk_files

EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors", ".png", ".webp", ".jxl", ".avif")
IMAGE_EXTENSIONS = (".png", ".webp", ".jxl", ".avif")


@dataclass
class Embedding:
    """One textual inversion. ``vec`` holds [vectors, width] float32 tensors per encoder."""

    name: str
    vec: dict[str, torch.Tensor]  # "default" (SD1/SD2) or "clip_l" + "clip_g" (SDXL)
    vectors: int
    shape: int  # total width: 768 SD1, 1024 SD2, 768+1280 SDXL (the WebUI's "shape")
    filename: str | None = None
    sha256: str = ""
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    bundled_in: str | None = None  # the LoRA that carried it, for embeddings inside a LoRA file

    @property
    def hash(self) -> str:
        """The 12 hex characters written in ``TI hashes: name: <hash>``."""
        return self.sha256[:12]

    @property
    def is_sdxl(self) -> bool:
        return "clip_l" in self.vec and "clip_g" in self.vec


def embedding_from_data(data: dict, name: str, filename: str | None = None) -> Embedding:
    """The WebUI's ``create_embedding_from_data``; raises ``ModelFileError`` for other layouts."""
    where = filename or name
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if len(params) != 1:
            raise ModelFileError("embedding file has multiple terms in it", path=where)
        tensor = next(iter(params.values()))
        vec = {"default": _as_vectors(tensor)}
    elif isinstance(data, dict) and "clip_g" in data and "clip_l" in data:
        vec = {"clip_l": _as_vectors(data["clip_l"]), "clip_g": _as_vectors(data["clip_g"])}
    elif isinstance(data, dict) and data and isinstance(next(iter(data.values())), torch.Tensor):
        if len(data) != 1:
            raise ModelFileError("embedding file has multiple terms in it", path=where)
        vec = {"default": _as_vectors(next(iter(data.values())))}
    else:
        raise ModelFileError("neither a textual inversion embedding nor a diffusers concept", path=where,
                             hint="expected string_to_param, clip_l/clip_g or a single tensor")
    if "default" in vec:
        vectors, shape = vec["default"].shape[0], vec["default"].shape[-1]
    else:
        vectors, shape = vec["clip_g"].shape[0], vec["clip_g"].shape[-1] + vec["clip_l"].shape[-1]
    step = data.get("step") if isinstance(data.get("step"), int) else None
    ckpt = data.get("sd_checkpoint")
    ckpt_name = data.get("sd_checkpoint_name")
    return Embedding(name=name, vec=vec, vectors=int(vectors), shape=int(shape), filename=filename, step=step,
                     sd_checkpoint=ckpt if isinstance(ckpt, str) else None,
                     sd_checkpoint_name=ckpt_name if isinstance(ckpt_name, str) else None)


def _as_vectors(tensor) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ModelFileError(f"embedding value is a {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach().to(torch.float32)
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor


# --- image embeddings -----------------------------------------------------------------------

def _decode_tensors(obj):
    if isinstance(obj, dict) and "TORCHTENSOR" in obj:
        return torch.from_numpy(np.array(obj["TORCHTENSOR"]))
    return obj


def embedding_from_b64(text: str | bytes) -> dict:
    """Decode an ``sd-ti-embedding`` text chunk: base64 JSON, tensors as ``{"TORCHTENSOR": ...}``."""
    return json.loads(base64.b64decode(text), object_hook=_decode_tensors)


def _lcg_bytes(count: int) -> np.ndarray:
    """The WebUI's LCG (a=1664525, c=1013904223, m=2^32, seed 0), each value mod 255."""
    out = np.empty(count, dtype=np.uint8)
    seed = 0
    for i in range(count):
        seed = (1664525 * seed + 1013904223) % 4294967296
        out[i] = seed % 255
    return out


def xor_block(block: np.ndarray) -> np.ndarray:
    """XOR the low nibbles with the LCG stream (its own inverse)."""
    rand = _lcg_bytes(int(np.prod(block.shape))).reshape(block.shape)
    return np.bitwise_xor(block.astype(np.uint8), rand & 0x0F)


def _crop_black(img: np.ndarray) -> np.ndarray:
    mask = (img > 0).all(2)
    cols, rows = mask.any(0), mask.any(1)
    c0, c1 = cols.argmax(), mask.shape[1] - cols[::-1].argmax()
    r0, r1 = rows.argmax(), mask.shape[0] - rows[::-1].argmax()
    return img[r0:r1, c0:c1]


def extract_image_data_embed(image) -> dict | None:
    """The pixel-encoded embedding (strips left and right of black columns), or None."""
    arr = np.array(image.convert("RGB"), dtype=np.uint8)
    data = _crop_black(arr) & 0x0F
    black_cols = np.where(np.sum(data, axis=(0, 2)) == 0)[0]
    if black_cols.shape[0] < 2:
        return None
    lower = xor_block(data[:, : black_cols.min(), :])
    upper = xor_block(data[:, black_cols.max() + 1:, :])
    packed = ((upper << 4) | lower).flatten().tobytes()
    try:
        return json.loads(zlib.decompressobj().decompress(packed), object_hook=_decode_tensors)
    except (zlib.error, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_embedding_file(path: Path) -> tuple[dict | None, str]:
    """(data, token name) for one file; data None when an image carries no embedding."""
    name, ext = path.stem, path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        from PIL import Image

        with Image.open(path) as image:
            text = getattr(image, "text", {}) or {}
            if "sd-ti-embedding" in text:
                data = embedding_from_b64(text["sd-ti-embedding"])
            else:
                data = extract_image_data_embed(image)
        if data is None:
            return None, name
        embedded_name = data.get("name")
        return data, embedded_name if isinstance(embedded_name, str) and embedded_name else name
    if ext in (".pt", ".bin"):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True), name
        except Exception as e:
            raise ModelFileError(f"cannot load as a weights-only torch file ({type(e).__name__})", path=path,
                                 hint="convert it to .safetensors; pickles that run code are refused") from e
    if ext == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), name
        except Exception as e:
            raise ModelFileError(f"cannot read safetensors data ({e})", path=path) from e
    return None, name



def load_embedding(path: str | Path) -> Embedding | None:
    """One embedding file → ``Embedding`` (None for an image without one). Raises ``ModelFileError``."""
    path = Path(path)
    data, name = read_embedding_file(path)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ModelFileError("does not contain a dict", path=path)
    embedding = embedding_from_data(data, name, filename=str(path))
    embedding.sha256 = sha256_file(path)
    return embedding


# --- the database ---------------------------------------------------------------------------

def expected_dims_for(text_encoders) -> dict[str, int]:
    """{"default": width} for one encoder, {"clip_l", "clip_g"} widths for SDXL's two."""
    widths = [te.config.hidden_size for te in text_encoders]
    return {"clip_l": widths[0], "clip_g": widths[1]} if len(widths) == 2 else {"default": widths[0]}


def mismatch_reason(embedding: Embedding, expected_dims: dict[str, int]) -> str | None:
    """Why this embedding cannot be used with a model of these widths, or None if it fits."""
    expected_total = sum(expected_dims.values())
    if set(expected_dims) == {"clip_l", "clip_g"}:
        if not embedding.is_sdxl:
            return f"width {embedding.shape} ≠ {expected_total} (not an SDXL embedding)"
        got = {k: embedding.vec[k].shape[-1] for k in ("clip_l", "clip_g")}
        if got != expected_dims:
            return f"width {embedding.shape} ≠ {expected_total}"
        return None
    if embedding.is_sdxl:
        return f"width {embedding.shape} ≠ {expected_total} (SDXL embedding)"
    if embedding.shape != expected_total:
        return f"width {embedding.shape} ≠ {expected_total}"
    return None


@dataclass
class SkippedEmbedding:
    name: str
    filename: str
    reason: str


def embedding_candidates(folder: Path) -> list[Path]:
    """Embedding files as the WebUI's database walks them: recursive, no ``*.preview.*`` images,
    no empty files; an image named like another embedding file beside it is that file's preview."""
    files = walk_files(folder, EMBEDDING_EXTENSIONS)
    data_files = {(p.parent, p.stem) for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS}
    out: list[Path] = []
    for path in files:
        if path.suffix.lower() in IMAGE_EXTENSIONS and (
                Path(path.stem).suffix.lower() == ".preview" or (path.parent, path.stem) in data_files):
            continue
        try:
            if path.stat().st_size == 0:
                continue
        except OSError:
            continue
        out.append(path)
    return out


@dataclass
class EmbeddingDatabase:
    """Embeddings under ``embeddings_dir`` for one model, looked up by token ids like the WebUI.

    ``tokenizer`` is a CLIP tokenizer (SDXL's two share the vocabulary, so one is enough); a
    name's ids are its tokens without BOS/EOS.
    """

    embeddings_dir: Path
    tokenizer: object
    loaded: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, SkippedEmbedding] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # file → message (unreadable files)
    _ids_lookup: dict[int, list[tuple[list[int], Embedding]]] = field(default_factory=dict)
    _signature: tuple | None = None
    _model_key: tuple | None = None
    _bundled: dict[str, Embedding] = field(default_factory=dict)

    def __post_init__(self):
        self.embeddings_dir = Path(self.embeddings_dir)
        if isinstance(self.tokenizer, (list, tuple)):
            self.tokenizer = self.tokenizer[0]

    def _folder_signature(self) -> tuple:
        """mtimes of every folder below the root: a file added, removed or renamed changes one."""
        if not self.embeddings_dir.is_dir():
            return ()
        sig = []
        for dirpath, _, _ in os.walk(self.embeddings_dir, followlinks=True):
            try:
                sig.append((dirpath, os.stat(dirpath).st_mtime_ns))
            except OSError:
                continue
        return tuple(sorted(sig))

    def load_for_model(self, family: str, expected_dims: dict[str, int], force: bool = False) -> bool:
        """(Re)load the folder for a model with these widths when anything changed; True if reloaded."""
        signature = self._folder_signature()
        model_key = (family, tuple(sorted(expected_dims.items())))
        if not force and signature == self._signature and model_key == self._model_key:
            return False
        self.loaded.clear()
        self.skipped.clear()
        self.errors.clear()
        self._ids_lookup.clear()
        for path in self._candidate_files():
            try:
                embedding = load_embedding(path)
            except ModelFileError as e:
                self.errors[str(path)] = e.message
                continue
            except Exception as e:  # an odd file must not stop the others from loading
                self.errors[str(path)] = f"{path}: {type(e).__name__}: {e}"
                continue
            if embedding is None:
                continue
            reason = mismatch_reason(embedding, expected_dims)
            if reason is None:
                self.register(embedding)
            else:
                self.skipped[embedding.name] = SkippedEmbedding(embedding.name, str(path), reason)
        self.loaded = dict(sorted(self.loaded.items(), key=lambda kv: kv[0].lower()))
        self._signature, self._model_key = signature, model_key
        self._bundled.clear()
        return True

    def _candidate_files(self) -> list[Path]:
        return embedding_candidates(self.embeddings_dir)

    def token_ids(self, name: str) -> list[int]:
        return list(self.tokenizer(name, truncation=False, add_special_tokens=False)["input_ids"])

    def register(self, embedding: Embedding) -> None:
        """Add (or replace) an embedding under its name; longer token sequences match first."""
        ids = self.token_ids(embedding.name)
        if not ids:
            return
        self.unregister(embedding.name)
        bucket = self._ids_lookup.setdefault(ids[0], [])
        bucket.append((ids, embedding))
        bucket.sort(key=lambda item: len(item[0]), reverse=True)
        self.loaded[embedding.name] = embedding

    def unregister(self, name: str) -> None:
        if name not in self.loaded:
            return
        del self.loaded[name]
        for first, bucket in list(self._ids_lookup.items()):
            bucket[:] = [item for item in bucket if item[1].name != name]
            if not bucket:
                del self._ids_lookup[first]

    def set_bundled(self, embeddings: dict[str, Embedding], expected_dims: dict[str, int]) -> list[SkippedEmbedding]:
        """Embeddings shipped inside the LoRAs of the current job (``bundle_emb.*``).

        Replaces the previous job's set. A name already loaded from the folder wins, as in the
        WebUI; a wrong width is returned as skipped.
        """
        for name in list(self._bundled):
            self.unregister(name)
        self._bundled.clear()
        skipped = []
        for name, embedding in embeddings.items():
            if name in self.loaded:
                continue
            reason = mismatch_reason(embedding, expected_dims)
            if reason is not None:
                skipped.append(SkippedEmbedding(name, embedding.filename or name, reason))
                continue
            self.register(embedding)
            self._bundled[name] = embedding
        return skipped

    def find_embedding_at_position(self, token_ids: list[int], offset: int) -> tuple[Embedding | None, int]:
        """The embedding whose name's token ids start at ``offset`` (longest first), and its length."""
        bucket = self._ids_lookup.get(token_ids[offset])
        if bucket is None:
            return None, 0
        for ids, embedding in bucket:
            if token_ids[offset:offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, 0


def bundled_embeddings(network_name: str, bundles: dict[str, dict]) -> dict[str, Embedding]:
    """``LoadedNetwork.bundle_embeddings`` data → ``Embedding`` objects tagged with their LoRA."""
    out = {}
    for name, data in bundles.items():
        embedding = embedding_from_data(data, name, filename=f"{network_name}/{name}")
        embedding.bundled_in = network_name
        out[name] = embedding
    return out
