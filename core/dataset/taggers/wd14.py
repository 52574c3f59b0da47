"""SmilingWolf's WD14 taggers (wd-v1-4-*, wd-*-tagger-v3): ``model.onnx`` + ``selected_tags.csv``.

A model folder is ``models/tagger/<name>/`` holding both files (the tagger extensions' and
kohya's ``wd14_tagger_model/<repo>/`` layout), or a Hugging Face cache folder
(``models--SmilingWolf--wd-vit-tagger-v3`` or one of its ``snapshots/<commit>/``).

Preprocessing is kohya's ``preprocess_image`` and the wd14-tagger extension's: transparency over
white, padded to a square on white, resized to the model's input size, BGR, float32 0–255, NHWC.
The input size is read from the model (448 for all published ones, but re-exports differ).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.dataset.images import to_rgb
from core.dataset.taggers.common import TagOptions, TagResult, finish_tags
from core.errors import KilnError, ModelFileError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
DEFAULT_SIZE = 448  # when the model's input has a symbolic height
CATEGORY_GENERAL, CATEGORY_CHARACTER, CATEGORY_RATING = 0, 4, 9
CHARACTER_MCUT_FLOOR = 0.15  # SmilingWolf's demo never lets character MCut go lower


@dataclass(frozen=True)
class Labels:
    names: tuple[str, ...]
    categories: np.ndarray  # int per name, aligned with the model's outputs


def find_model_files(folder: str | Path) -> tuple[Path, Path] | None:
    """``(model.onnx, selected_tags.csv)`` of a tagger folder or a Hugging Face cache folder; None if absent."""
    folder = Path(folder)
    if (folder / MODEL_FILE).is_file() and (folder / TAGS_FILE).is_file():
        return folder / MODEL_FILE, folder / TAGS_FILE
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return None
    # The snapshot refs/main names comes first (the one huggingface_hub would use), then the newest.
    preferred: list[Path] = []
    ref = folder / "refs" / "main"
    if ref.is_file():
        preferred.append(snapshots / ref.read_text(encoding="utf-8").strip())
    preferred += sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in preferred:
        if (snap / MODEL_FILE).is_file() and (snap / TAGS_FILE).is_file():
            return snap / MODEL_FILE, snap / TAGS_FILE
    return None


def is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and find_model_files(folder) is not None


def read_labels(path: str | Path) -> Labels:
    """``selected_tags.csv`` (tag_id,name,category,count) → names and categories in output order."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"cannot read the tag list ({exc})", path=path) from exc
    if not rows or [c.strip() for c in rows[0][:3]] != ["tag_id", "name", "category"]:
        raise ModelFileError("not a WD14 selected_tags.csv: the header must start with tag_id,name,category",
                             path=path, hint="use the selected_tags.csv that came with the model.onnx")
    names, categories = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            names.append(row[1])
            categories.append(int(row[2]))
        except (IndexError, ValueError) as exc:
            raise ModelFileError(f"line {line} has no name and numeric category: {row!r}", path=path) from exc
    if not names:
        raise ModelFileError("the tag list is empty", path=path)
    return Labels(tuple(names), np.asarray(categories, dtype=np.int64))


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """One picture → ``float32[size, size, 3]`` BGR 0–255 (see the module docstring)."""
    import cv2

    rgb = np.asarray(to_rgb(image, (255, 255, 255)))
    h, w = rgb.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.full((side, side, 3), 255, dtype=np.uint8)
    square[top:top + h, left:left + w] = rgb
    if side != size:
        # INTER_AREA when shrinking (kohya); enlarging with Lanczos as kohya's pil_resize does.
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LANCZOS4
        square = cv2.resize(square, (size, size), interpolation=interp)
    return np.ascontiguousarray(square[:, :, ::-1], dtype=np.float32)


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut Thresholding (Largeron et al. 2012): the middle of the largest gap between
    consecutive sorted scores, as in SmilingWolf's demo; 1.0 (nothing) with fewer than 2 scores."""
    if probs.size < 2:
        return 1.0
    ordered = np.sort(probs)[::-1]
    gaps = ordered[:-1] - ordered[1:]
    t = int(gaps.argmax())
    return float((ordered[t] + ordered[t + 1]) / 2)


def select_tags(probs: np.ndarray, labels: Labels, options: TagOptions) -> TagResult:
    """One image's scores (aligned with ``labels``) → its tags, per ``options``."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    cats = labels.categories
    general = np.flatnonzero(cats == CATEGORY_GENERAL)
    character = np.flatnonzero(cats == CATEGORY_CHARACTER)
    rating = np.flatnonzero(cats == CATEGORY_RATING)

    g_thr = mcut_threshold(probs[general]) if options.general_mcut else options.general_threshold
    c_thr = (max(CHARACTER_MCUT_FLOOR, mcut_threshold(probs[character])) if options.character_mcut
             else options.character_threshold)
    picked_general = [(labels.names[i], float(probs[i])) for i in general if probs[i] >= g_thr]
    picked_character = [(labels.names[i], float(probs[i])) for i in character if probs[i] >= c_thr]
    ratings = {labels.names[i]: float(probs[i]) for i in rating}

    lead: list[tuple[str, float]] = []
    if options.include_ratings and ratings:
        # kohya: the one best rating (argmax), put at the start of the caption
        best = max(ratings.items(), key=lambda kv: kv[1])
        lead.append(best)
    if options.character_first:
        ordered = sorted(picked_character, key=lambda ts: -ts[1]) if options.sort == "confidence" else picked_character
        lead += ordered
        rest = picked_general
    else:
        # Model order for "model" sorting: general first, then characters (kohya's loop order).
        rest = picked_general + picked_character
    return TagResult(tags=finish_tags(rest, options, lead=lead), ratings=ratings)


def _providers(device: str) -> list:
    """CUDA (on the worker's GPU: "cuda:1" → device_id 1) when onnxruntime has it, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        index = device.partition(":")[2]
        cuda = ("CUDAExecutionProvider", {"device_id": int(index)}) if index.isdigit() else "CUDAExecutionProvider"
        return [cuda, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class WD14Tagger:
    """A loaded WD14 model: ``tag(images, options)`` scores a batch in one ONNX run."""

    kind = "wd14"

    def __init__(self, folder: str | Path, *, name: str | None = None, device: str = "cuda"):
        folder = Path(folder)
        files = find_model_files(folder)
        if files is None:
            raise KilnError(f"no WD14 model here: it needs {MODEL_FILE} and {TAGS_FILE} side by side",
                            path=folder, hint=f"download both files of a SmilingWolf tagger (e.g. "
                            f"SmilingWolf/wd-vit-tagger-v3) into {folder}")
        self.model_path, self.tags_path = files
        self.name = name or folder.name
        self.labels = read_labels(self.tags_path)
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(self.model_path), providers=_providers(device))
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelFileError(f"onnxruntime cannot load the model ({exc})", path=self.model_path,
                                 hint="download model.onnx again; the file may be incomplete") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[3] != 3:
            raise ModelFileError(f"expected an NHWC image input [batch, height, width, 3], found {shape}",
                                 path=self.model_path, hint="this is not a WD14 tagger export")
        self.size = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else DEFAULT_SIZE
        batch = shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else 0  # 0: any batch size
        out = self.session.get_outputs()[0].shape
        width = out[-1] if out else None
        if isinstance(width, int) and width != len(self.labels.names):
            raise ModelFileError(f"the model scores {width} tags but {self.tags_path.name} lists "
                                 f"{len(self.labels.names)}", path=self.model_path,
                                 hint="model.onnx and selected_tags.csv must come from the same model")
        self.providers = self.session.get_providers()

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raw scores ``float[len(images), n_tags]`` (the models end in a sigmoid)."""
        if not images:
            return np.zeros((0, len(self.labels.names)), dtype=np.float32)
        batch = np.stack([preprocess(im, self.size) for im in images])
        if self.fixed_batch:  # a model exported with a fixed batch: run it piece by piece
            parts = []
            for start in range(0, len(batch), self.fixed_batch):
                chunk = batch[start:start + self.fixed_batch]
                pad = self.fixed_batch - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
                parts.append(self.session.run(None, {self.input_name: chunk})[0][: len(chunk) - pad])
            return np.concatenate(parts)
        return self.session.run(None, {self.input_name: batch})[0]

    def tag(self, images: Sequence[Image.Image], options: TagOptions | None = None) -> list[TagResult]:
        options = options or TagOptions()
        return [select_tags(p, self.labels, options) for p in self.scores(images)]

    def close(self) -> None:
        self.session = None  # onnxruntime frees the model with the session
