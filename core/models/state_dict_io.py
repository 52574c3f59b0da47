"""Read tensors from model files safely: safetensors first, pickles only with weights_only=True."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import torch

from core.errors import ModelFileError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
# A safetensors header larger than this is not a real header (the format caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


def read_safetensors_header(path: str | Path) -> tuple[int, dict[str, Any]]:
    """Return (header length N, parsed JSON header) after checking N against the file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ModelFileError("file not found", path=path) from exc
    if size == 0:
        raise ModelFileError("the file is empty (0 bytes)", path=path, hint="download or copy it again")
    if size < 8:
        raise ModelFileError("the file is too short to be a safetensors file", path=path,
                             hint="download or copy it again")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n == 0 or n > _MAX_HEADER_BYTES or 8 + n > size:
            raise ModelFileError(
                f"the safetensors header says {n} bytes but the file has {size} bytes",
                path=path, hint="the file is truncated or not safetensors; download it again")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError("the safetensors header is not valid JSON", path=path,
                             hint="the file is corrupt; download it again") from exc
    if not isinstance(header, dict):
        raise ModelFileError("the safetensors header is not a JSON object", path=path,
                             hint="the file is corrupt; download it again")
    data_end = max((int(v["data_offsets"][1]) for k, v in header.items()
                    if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + data_end > size:
        raise ModelFileError(
            f"the file is truncated: its tensors need {8 + n + data_end} bytes, it has {size}",
            path=path, hint="download or copy it again")
    return n, header


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file, reading only its header."""
    _, header = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_header(path)  # clear errors for truncated / non-safetensors files
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"cannot read safetensors data ({exc})", path=path,
                             hint="the file is corrupt; download it again") from exc


def load_pickle_weights_only(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` on CPU, with user-facing errors for unsafe or broken files."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ModelFileError("the file is empty (0 bytes)", path=path, hint="download or copy it again")
    except FileNotFoundError as exc:
        raise ModelFileError("file not found", path=path) from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise ModelFileError(
                f"needs arbitrary code to unpickle ({first_line[:200]})", path=path,
                hint="convert it to .safetensors with a tool you trust, or get a .safetensors copy",
            ) from exc
        raise ModelFileError(f"cannot unpickle ({first_line[:200]})", path=path,
                             hint="the file is corrupt or not a PyTorch file") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read the file ({str(exc).strip()[:200]})", path=path,
                             hint="the file is truncated or corrupt; download it again") from exc


def flatten_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of nested dicts/lists as ``a.b.0.c`` keys; other leaves (ints, strings) are dropped."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_tensors(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten_tensors(v, f"{prefix}{i}."))
    return out


def unwrap_state_dict(obj: Any) -> Any:
    """Checkpoints saved by Lightning keep the weights under ``state_dict`` (sometimes twice)."""
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return obj


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model file, on CPU, keyed as in the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelFileError("file not found", path=path)
    if suffix == SAFETENSORS_SUFFIX:
        tensors = _read_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        tensors = flatten_tensors(unwrap_state_dict(load_pickle_weights_only(path)))
    else:
        raise ModelFileError(f"unknown model file type '{suffix}'", path=path,
                             hint="use .safetensors (or .ckpt/.pt/.bin/.pth)")
    if not tensors:
        raise ModelFileError("the file contains no tensors", path=path,
                             hint="it is not a model file, or it is damaged")
    return tensors
