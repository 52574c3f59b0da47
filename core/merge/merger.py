"""The Checkpoint Merger: A, B (and C) streamed key by key into one new checkpoint file.

Semantics are the WebUI's (A1111 v1.10 ``modules/extras.py`` ``run_modelmerger``):

- Weighted sum ``A·(1−M) + B·M``; Add difference ``A + (B − C)·M``; No interpolation: A as is
  (to save it as float16, bake a VAE in or discard weights).
- Only keys with ``model`` in their name are merged (U-Net, VAE, text encoders, EMA); the rest
  (``alphas_cumprod``...) are A's. CLIP's ``position_ids`` are never merged (an integer table).
- An inpainting (9-channel) or instruct-pix2pix (8-channel) A merges its first 4 input channels
  with a normal B, and the file name gains ``.inpainting`` / ``.instruct-pix2pix``; a normal A
  with an inpainting B is refused, as in the WebUI.
- "Save as float16" halves float32 tensors that were merged (all of them with No interpolation);
  Bake in VAE replaces A's ``first_stage_model.*`` tensors with the VAE file's; "Discard weights"
  drops every key its regular expression finds; ``sd_merge_recipe`` / ``sd_merge_models`` metadata.

Kiln does better where the WebUI is poor: every check (architectures, keys, shapes, output name,
VAE fit, LoRA file) runs before the long part, and a mismatch names the first key that differs;
the arithmetic is done in float32 and rounded once; the file is written atomically and never over
an existing one unless asked. Memory: the output dict plus the tensors of one key, never A, B and C
whole. Kiln extras: A's text encoder replaced by B's (seed 004: keep A's U-Net, use another
model's TE), and a LoRA baked in at a weight through the same code that applies it at generation.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from core.errors import KilnError, ModelFileError
from core.fileio import atomic_save_new_with, atomic_save_with
from core.hashing import model_hash_old, sha256_file
from core.merge.recipe import (
    ADD_DIFFERENCE,
    NO_INTERPOLATION,
    WEIGHTED_SUM,
    MergeParams,
    ModelRef,
    SourceInfo,
    merge_models,
    merge_recipe,
    output_filename,
)
from core.merge.sources import TensorSource
from core.models.layout import UNET_PREFIX, VAE_PREFIX, normalize_vae_ldm_key

# Prefixes of the tensors the model is made of (the rest: EMA copies, DDPM buffers, markers).
ARCHITECTURE_PREFIXES = (UNET_PREFIX, VAE_PREFIX, "cond_stage_model.", "conditioner.")
TEXT_ENCODER_PREFIXES = {"sd1": ("cond_stage_model.",), "sd2": ("cond_stage_model.",), "sdxl": ("conditioner.",)}
_FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
# The WebUI's checkpoint_dict_skip_on_merge is SD1's position_ids; SDXL's CLIP-L has the same table.
_SKIP_ON_MERGE = re.compile(r"(^|\.)position_ids$")
CONV_IN_CHANNELS = {9: "inpainting", 8: "instruct-pix2pix"}


class Progress(Protocol):
    """What the merger reports to (a JobContext fits): key k of n, a line of text, Interrupt."""

    def set_total(self, total_steps: int, job_count: int = 1) -> None: ...
    def set_text(self, text: str) -> None: ...
    def advance(self, steps: int = 1, *, check: bool = True) -> None: ...


class _Quiet:
    def set_total(self, total_steps: int, job_count: int = 1) -> None:
        pass

    def set_text(self, text: str) -> None:
        pass

    def advance(self, steps: int = 1, *, check: bool = True) -> None:
        pass


@dataclass
class MergeResult:
    path: Path
    keys: int
    is_inpainting: bool = False
    is_instruct_pix2pix: bool = False
    config_path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        """The WebUI's result line."""
        return f"Checkpoint saved to {self.path}"


class MergeMismatch(ModelFileError):
    """The models cannot be merged: another architecture, a key or a shape that differs."""


# --------------------------------------------------------------------------------- checks --

def _is_merged_key(key: str) -> bool:
    return "model" in key and not _SKIP_ON_MERGE.search(key)


def _family(source: TensorSource) -> str:
    return source.spec().family


def _first_difference(a: TensorSource, b: TensorSource, label_b: str) -> str | None:
    """The first architecture key (in A's order) that ``b`` lacks or shapes otherwise, then the
    first that only ``b`` has; None when they fit (inpainting conv_in handled by the caller)."""
    for key in a.keys():
        if not key.startswith(ARCHITECTURE_PREFIXES) or _SKIP_ON_MERGE.search(key):
            continue
        if key not in b:
            return f"{key} is in A but not in {label_b}"
        if a.shape(key) != b.shape(key) and _extra_channels(a.shape(key), b.shape(key)) is None:
            return f"{key} is {list(a.shape(key))} in A but {list(b.shape(key))} in {label_b}"
    for key in b.keys():
        if key.startswith(ARCHITECTURE_PREFIXES) and not _SKIP_ON_MERGE.search(key) and key not in a:
            return f"{key} is in {label_b} but not in A"
    return None


def _extra_channels(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> int | None:
    """A's input channels when A is an inpainting / instruct-pix2pix conv_in and B a normal one
    (the WebUI's test: equal but for dimension 1)."""
    if len(shape_a) != len(shape_b) or len(shape_a) < 2 or shape_a[:1] + shape_a[2:] != shape_b[:1] + shape_b[2:]:
        return None
    if shape_b[1] == 4 and shape_a[1] in CONV_IN_CHANNELS:
        return shape_a[1]
    return None


def check_compatible(a: TensorSource, b: TensorSource, label_b: str = "B") -> None:
    """Refuse two checkpoints of other architectures, naming the first key that differs."""
    fa, fb = _family(a), _family(b)
    difference = _first_difference(a, b, label_b)
    if fa != fb:
        raise MergeMismatch(
            f"A is an {_FAMILY_NAMES[fa]} model and {label_b} is an {_FAMILY_NAMES[fb]} model; they cannot be merged"
            + (f" (first mismatched key: {difference})" if difference else ""),
            path=b.path, hint=f"choose models of the same family for A and {label_b}")
    if difference is not None:
        for key in a.keys():  # a normal A with an inpainting B: the WebUI's own message
            if key in b and _extra_channels(b.shape(key), a.shape(key)) is not None:
                kind = CONV_IN_CHANNELS[b.shape(key)[1]]
                raise MergeMismatch(f"When merging {kind} model with a normal one, A must be the {kind} model.",
                                    path=b.path, hint=f"swap A and {label_b}")
        raise MergeMismatch(f"the models do not have the same layers: first mismatched key: {difference}",
                            path=b.path, hint=f"A and {label_b} must be the same architecture (a variant or a "
                                              "pruned copy with missing layers cannot be merged)")


# ---------------------------------------------------------------------------------- merge --

def _weighted_sum(a: torch.Tensor, b: torch.Tensor, m: float) -> torch.Tensor:
    return (1 - m) * a + m * b


def _add_difference(a: torch.Tensor, b_minus_c: torch.Tensor, m: float) -> torch.Tensor:
    return a + m * b_minus_c


def _combine(method: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, m: float) -> torch.Tensor:
    """The merged tensor, computed in float32 and rounded once to the inputs' common dtype."""
    dtype = torch.promote_types(a.dtype, b.dtype) if c is None else \
        torch.promote_types(torch.promote_types(a.dtype, b.dtype), c.dtype)
    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    channels = _extra_channels(tuple(a.shape), tuple(b.shape))
    part = a32[:, 0:4] if channels else a32
    if method == WEIGHTED_SUM:
        merged = _weighted_sum(part, b32, m)
    else:
        merged = _add_difference(part, b32 - c.to(torch.float32), m)
    if channels:
        whole = a32.clone()
        whole[:, 0:4] = merged
        merged = whole
    return merged.to(dtype)


def _to_half(tensor: torch.Tensor) -> torch.Tensor:
    """The WebUI's ``to_half``: only float32 becomes float16 (bf16 / fp16 stay as they are)."""
    return tensor.half() if tensor.dtype == torch.float32 else tensor


def _config_near(ref: ModelRef | None) -> Path | None:
    """The WebUI's ``find_checkpoint_config_near_filename``: ``<checkpoint stem>.yaml`` beside it."""
    if ref is None:
        return None
    config = ref.path.with_suffix(".yaml")
    return config if config.is_file() else None


def _config_source(params: MergeParams) -> Path | None:
    a, b, c = params.primary, params.secondary if params.uses_secondary else None, \
        params.tertiary if params.uses_tertiary else None
    source = int(params.config_source)
    if source == 0:
        return _config_near(a) or _config_near(b) or _config_near(c)
    if source == 1:
        return _config_near(b)
    if source == 2:
        return _config_near(c)
    return None


def _read_vae(path: Path, a: TensorSource) -> dict[str, torch.Tensor]:
    """The VAE file's tensors under A's own ``first_stage_model.*`` names (either attention
    naming), refused before the merge when a shape does not fit A."""
    from core.models.state_dict_io import read_state_dict
    from core.models.vae import _standalone_tensors  # the VAE loader's own reading rules

    tensors = _standalone_tensors(read_state_dict(path))
    if "encoder.conv_in.weight" not in tensors or "decoder.conv_out.weight" not in tensors:
        raise ModelFileError("not a VAE (no encoder.conv_in / decoder.conv_out weights)", path=path,
                             hint="put only VAE files in models/VAE")
    names = {normalize_vae_ldm_key(k)[len(VAE_PREFIX):]: k for k in a.keys() if k.startswith(VAE_PREFIX)}
    out = {}
    for key, tensor in tensors.items():
        target = names.get(key)
        if target is None:
            continue
        if tuple(tensor.shape) != a.shape(target):
            raise MergeMismatch(f"this VAE does not fit model A: {key} is {list(tensor.shape)}, "
                                f"A has {list(a.shape(target))}", path=path,
                                hint="choose a VAE made for this model family")
        out[target] = tensor
    if not out:
        raise MergeMismatch("none of this VAE's tensors are in model A", path=path,
                            hint="choose a VAE made for this model family")
    return out


def run_merge(params: MergeParams, ckpt_dir: str | Path, progress: Progress | None = None, *,
              sha256: Callable[[Path], str] = sha256_file) -> MergeResult:
    """Merge as ``params`` says and write the result into ``ckpt_dir``; returns where it went.

    Raises KilnError (nothing written) for a bad choice, a mismatch or an existing output file.
    ``sha256`` hashes an input for the metadata (the engine passes its cached hasher).
    """
    progress = progress or _Quiet()
    params.validate()
    ckpt_dir = Path(ckpt_dir)
    warnings: list[str] = []
    progress.set_text("Checking the models")
    with ExitStack() as stack:  # the three files stay open for the streaming pass only
        a = stack.enter_context(TensorSource(params.primary.path))
        b = stack.enter_context(TensorSource(params.secondary.path)) if params.uses_secondary else None
        c = stack.enter_context(TensorSource(params.tertiary.path)) if params.uses_tertiary else None
        spec = a.spec()
        if b is not None:
            check_compatible(a, b, "B")
        if c is not None:
            check_compatible(a, c, "C")
            for key in b.keys():  # B − C is taken key by key: C must shape as B does
                if key in c and _is_merged_key(key) and b.shape(key) != c.shape(key):
                    raise MergeMismatch(f"first mismatched key: {key} is {list(b.shape(key))} in B but "
                                        f"{list(c.shape(key))} in C", path=c.path, hint="B and C must be the same "
                                                                                        "architecture")
        method = params.interp_method
        merging = method != NO_INTERPOLATION
        text_encoder = TEXT_ENCODER_PREFIXES[spec.family] if params.replace_text_encoder else ()
        extra = {}
        if merging:
            extra = {key: _extra_channels(a.shape(key), b.shape(key)) for key in a.keys()
                     if key in b and _is_merged_key(key)}
        inpainting = 9 in extra.values()
        pix2pix = 8 in extra.values()

        # Where it goes, and everything else that can fail, before the long part.
        out_path = ckpt_dir / output_filename(params, inpainting=inpainting, instruct_pix2pix=pix2pix)
        if out_path.exists() and not params.overwrite:
            raise KilnError(f"{out_path.name} already exists in {ckpt_dir}", path=out_path,
                            hint="type another Custom Name, or tick Overwrite to replace it")
        config_from = _config_source(params)
        config_to = out_path.with_suffix(".yaml") if config_from is not None else None
        if config_to is not None and config_to.exists() and not params.overwrite:
            raise KilnError(f"{config_to.name} already exists", path=config_to,
                            hint="type another Custom Name, or choose Don't under Copy config from")
        vae = _read_vae(Path(params.bake_in_vae_path), a) if params.bake_in_vae_path is not None else {}
        network = None
        if params.lora is not None:
            from core.networks.lora import load_network

            network = load_network(params.lora.path)

        out, halve = _merge_tensors(params, a, b, c, extra, text_encoder, progress, warnings)

    if network is not None:
        progress.set_text(f"Baking in LoRA {params.lora.name}")
        from core.merge.lora_bake import bake_network

        warnings += bake_network(out, spec, network, float(params.lora_weight))
        halve.update(k for k in out if k.startswith((UNET_PREFIX, *TEXT_ENCODER_PREFIXES[spec.family])))
    if vae:
        progress.set_text("Baking in VAE")
        out.update(vae)
        halve.update(vae)
    if params.save_as_half:
        for key in (out if not merging else halve):
            out[key] = _to_half(out[key])
    if params.discard_weights:
        pattern = re.compile(params.discard_weights)
        for key in [k for k in out if pattern.search(k)]:
            del out[key]

    progress.set_text("Saving")
    metadata = _metadata(params, a.metadata, progress, sha256, inpainting=inpainting, pix2pix=pix2pix)
    _write(out, out_path, metadata, overwrite=params.overwrite)
    config_path = None
    if config_to is not None:
        save = atomic_save_with if params.overwrite else atomic_save_new_with
        config_path = save(config_to, lambda tmp: shutil.copyfile(config_from, tmp))
    return MergeResult(path=out_path, keys=len(out), is_inpainting=inpainting, is_instruct_pix2pix=pix2pix,
                       config_path=config_path, metadata=metadata, warnings=warnings)


def _merge_tensors(params: MergeParams, a: TensorSource, b: TensorSource | None, c: TensorSource | None,
                   extra: dict[str, int | None], text_encoder: tuple[str, ...], progress: Progress,
                   warnings: list[str]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The streaming pass: A's keys in order, each merged from the three files' tensors of that
    key only. Returns the output tensors and the keys that count as merged (for float16)."""
    method = params.interp_method
    merging = method != NO_INTERPOLATION
    keys = a.keys()
    progress.set_total(len(keys))
    out: dict[str, torch.Tensor] = {}
    halve: set[str] = set()
    what = {WEIGHTED_SUM: "Merging A and B", ADD_DIFFERENCE: "Merging A, B and C"}.get(method, "Copying A")
    for k, key in enumerate(keys, start=1):
        progress.set_text(f"{what}: key {k} of {len(keys)}")
        tensor = a.get(key)
        if text_encoder and key.startswith(text_encoder) and key in b:
            tensor = b.get(key)
            halve.add(key)
        elif merging and key in b and _is_merged_key(key) and tensor.is_floating_point() \
                and b.dtype(key).is_floating_point:
            if a.shape(key) != b.shape(key) and not extra.get(key):
                # only outside the architecture (an EMA copy of another size): A's, as it is
                warnings.append(f"{key}: {list(a.shape(key))} in A but {list(b.shape(key))} in B; A's kept")
                out[key] = tensor
                progress.advance()
                continue
            other = b.get(key)
            third = c.get(key) if c is not None else None
            if third is None and method == ADD_DIFFERENCE:
                third = torch.zeros_like(other)  # the WebUI: a key C lacks adds nothing (B − B)
                other = third
            tensor = _combine(method, tensor, other, third, float(params.multiplier))
            halve.add(key)
        out[key] = tensor
        progress.advance()

    return out, halve


def _metadata(params: MergeParams, primary_metadata: dict[str, str], progress: Progress,
              sha256: Callable[[Path], str], *, inpainting: bool, pix2pix: bool) -> dict[str, str]:
    """The WebUI's metadata rules (inputs' fields copied, JSON added, recipe and model tree), and
    always A's ``kiln.*`` structure keys: Kiln's loader needs them for a non-standard model."""
    refs = [params.primary] + ([params.secondary] if params.uses_secondary else []) + \
        ([params.tertiary] if params.uses_tertiary else [])
    metadata: dict[str, str] = {}
    if params.save_metadata and params.copy_metadata_fields:
        for ref in refs:
            metadata.update(_file_metadata(ref.path))
    if params.save_metadata:
        metadata.update({str(k): v if isinstance(v, str) else json.dumps(v)
                         for k, v in json.loads(params.metadata_json or "{}").items()})
    if params.save_metadata and params.add_merge_recipe:
        hashes: dict[Path, str] = {}

        def hash_of(ref: ModelRef) -> str:
            if ref.path not in hashes:
                progress.set_text(f"Hashing {ref.name}")
                hashes[ref.path] = sha256(ref.path)
            return hashes[ref.path]

        recipe = merge_recipe(params, sha256=hash_of, inpainting=inpainting, instruct_pix2pix=pix2pix)
        sources = [SourceInfo(ref, _file_metadata(ref.path), hash_of(ref), model_hash_old(ref.path)) for ref in refs]
        metadata["sd_merge_recipe"] = json.dumps(recipe)
        metadata["sd_merge_models"] = json.dumps(merge_models(sources))
    metadata = {k: v for k, v in metadata.items() if not k.startswith("kiln.")}
    metadata.update({k: v for k, v in primary_metadata.items() if k.startswith("kiln.")})
    metadata["format"] = "pt"
    return metadata


def _file_metadata(path: Path) -> dict[str, str]:
    from core.models.checkpoint import read_checkpoint_metadata

    return read_checkpoint_metadata(path)


def _write(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str], *, overwrite: bool) -> None:
    from core.models.checkpoint import _unshare  # safetensors refuses tensors sharing memory

    tensors = _unshare(tensors)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        def writer(tmp):
            save_file(tensors, tmp, metadata=metadata)
    else:
        def writer(tmp):
            torch.save(tensors, tmp)  # the WebUI's .ckpt: the flat state dict
    save = atomic_save_with if overwrite else atomic_save_new_with
    try:
        save(path, writer)
    except FileExistsError as exc:
        raise KilnError(f"{path.name} appeared while merging", path=path,
                        hint="type another Custom Name") from exc
