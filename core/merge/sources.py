"""Checkpoint files read one tensor at a time, so a merge never holds A, B and C whole.

A ``.safetensors`` file is opened with ``safe_open``: its header (read through Kiln's checked
reader) gives every key's shape and dtype, and each tensor is read when asked for. A pickled
``.ckpt`` is loaded with ``torch.load(mmap=True, weights_only=True)``: tensors stay on disk
until touched (the zip format since torch 1.6; older files are read whole, as before).
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import ModelFileError
from core.models.architecture import ModelSpec, detect_architecture
from core.models.state_dict_io import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    flatten_tensors,
    load_pickle_weights_only,
    read_safetensors_header,
    unwrap_state_dict,
)

# safetensors' dtype names -> torch dtypes (what a meta tensor of the same kind needs).
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", torch.float16),
    "F8_E5M2": getattr(torch, "float8_e5m2", torch.float16),
}


# The WebUI's checkpoint_dict_replacements_sd1: very old SD1 files lack CLIP's ``text_model.``
# level; their keys are read under today's names so they merge with newer files.
_SD1_OLD_NAMES = tuple((f"cond_stage_model.transformer.{part}", f"cond_stage_model.transformer.text_model.{part}")
                       for part in ("embeddings.", "encoder.", "final_layer_norm."))


def webui_key(key: str) -> str:
    for old, new in _SD1_OLD_NAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


class TensorSource:
    """One checkpoint file: its keys (as the WebUI names them), each key's shape/dtype, and
    tensors read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if not self.path.is_file():
            raise ModelFileError("file not found", path=self.path, hint="press 🔄 to rescan the checkpoint folder")
        self._handle = None
        self._tensors: dict[str, torch.Tensor] | None = None
        self.metadata: dict[str, str] = {}
        if suffix == SAFETENSORS_SUFFIX:
            _, header = read_safetensors_header(self.path)
            self.metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
            self._meta = {k: torch.empty(v["shape"], dtype=_ST_DTYPES.get(v["dtype"], torch.float32), device="meta")
                          for k, v in header.items() if k != "__metadata__"}
            from safetensors import safe_open

            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
        elif suffix in PICKLE_SUFFIXES:
            self._tensors = flatten_tensors(unwrap_state_dict(_load_pickle_lazily(self.path)))
            self._meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in self._tensors.items()}
        else:
            raise ModelFileError(f"unknown checkpoint file type '{suffix}'", path=self.path,
                                 hint="merge .safetensors or .ckpt checkpoints")
        if not self._meta:
            raise ModelFileError("the file contains no tensors", path=self.path, hint="it is not a model file")
        self._file_key = {webui_key(k): k for k in self._meta}
        self._meta = {webui_key(k): v for k, v in self._meta.items()}

    def keys(self) -> list[str]:
        return list(self._meta)

    def __contains__(self, key: str) -> bool:
        return key in self._meta

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._meta[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._meta[key].dtype

    def shapes(self) -> dict[str, torch.Tensor]:
        """Meta tensors (shape and dtype, no data) for every key: enough to tell the architecture."""
        return dict(self._meta)

    def get(self, key: str) -> torch.Tensor:
        """The tensor of ``key`` (today's name), read now, on the CPU."""
        key = self._file_key[key]
        if self._handle is not None:
            try:
                return self._handle.get_tensor(key)
            except Exception as exc:  # safetensors raises its own error types for damaged data
                raise ModelFileError(f"cannot read tensor {key} ({exc})", path=self.path,
                                     hint="the file is damaged; download it again") from exc
        assert self._tensors is not None
        return self._tensors[key]

    def spec(self) -> ModelSpec:
        """The architecture Kiln's loader reads from this file (shapes only)."""
        return detect_architecture(self._meta, self.metadata, path=self.path)

    def close(self) -> None:
        self._handle = None
        self._tensors = None

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_pickle_lazily(path: Path):
    """``torch.load`` memory-mapped where the file allows it, else Kiln's plain weights-only load."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format pickle (or unsafe): the checked loader gives the clear error
        return load_pickle_weights_only(path)
