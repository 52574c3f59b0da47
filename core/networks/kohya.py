"""kohya-ss/sd-scripts' LoRA files, written the way ``networks/lora.py`` and ``train_network.py`` write them.

- Names: a module's kohya name is a prefix plus its module path with every ``.`` turned into ``_``:
  ``lora_unet_`` (SD1/SD2: diffusers U-Net paths; SDXL: the original SGM/LDM U-Net paths),
  ``lora_te_`` (SD1/SD2 CLIP) or ``lora_te1_``/``lora_te2_`` (SDXL CLIP-L / bigG), text encoders
  spelled with the transformers 4.x ``text_model.`` level. Each module stores
  ``<name>.lora_down.weight``, ``<name>.lora_up.weight`` and a 0-dim ``<name>.alpha``.
- Default targets: every Linear and 1×1 Conv2d inside a ``Transformer2DModel`` (U-Net) and inside
  ``CLIPAttention`` / ``CLIPSdpaAttention`` / ``CLIPMLP`` (text encoders).
- Metadata: ``ss_*`` keys, every value a string (``str()``: ``None`` → ``"None"``, ``True`` →
  ``"True"``, ``1e-4`` → ``"0.0001"``; JSON-valued keys through ``json.dumps``), then
  ``sshs_model_hash`` / ``sshs_legacy_hash`` computed from an in-memory save holding only the
  ``ss_*`` keys (``train_util.precalculate_safetensors_hashes``).

See ``FORMATS.md`` §1 and §3. The fixtures (``core.networks.fixtures``) write their kohya file here;
the trainer writes its LoRAs here. The metadata viewer's tables (tag frequency, dataset folders,
buckets, the summary) read the same keys back.
"""

from __future__ import annotations

import datetime
import json
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.fileio import atomic_save_with
from core.hashing import addnet_hash_bytes, model_hash_old_bytes

UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"
SDXL_TE_PREFIXES = ("lora_te1_", "lora_te2_")
LORA_DOWN, LORA_UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"

UNET_TARGET_CLASSES = ("Transformer2DModel",)
TE_TARGET_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")

# Keys whose value kohya writes with json.dumps (None becomes "null").
JSON_KEYS = frozenset({"ss_datasets", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency",
                       "ss_bucket_info", "ss_network_args"})
# What --no_metadata keeps (train_util.SS_METADATA_MINIMUM_KEYS), before modelspec and sshs.
MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                "ss_network_args")
_BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


# --- names ------------------------------------------------------------------------------------

def kohya_name(prefix: str, module_path: str) -> str:
    """``prefix`` + the module path with ``.`` → ``_`` (``lora_unet_`` + ``down_blocks.0...``)."""
    return prefix + module_path.replace(".", "_")


def te_prefixes(family: str, count: int) -> list[str]:
    """The prefix of each text encoder: ``lora_te_`` for SD1/SD2, ``lora_te1_``/``lora_te2_`` for SDXL."""
    return list(SDXL_TE_PREFIXES[:count]) if family == "sdxl" else [TE_PREFIX]


def te_name(prefix: str, module_path: str) -> str:
    """A text-encoder module (transformers 4.x or 5.x path) → its kohya name, with the 4.x
    ``text_model.`` level kohya and the WebUI use (``lora_te_text_model_encoder_layers_0_...``)."""
    if not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return kohya_name(prefix, module_path)


def unet_names(unet: nn.Module, family: str, unet_config: Mapping[str, Any] | None = None) -> dict[str, str]:
    """diffusers U-Net module path → kohya ``lora_unet_*`` name (for SDXL through the SGM/LDM names,
    as kohya's SDXL trainer writes them; modules with no LDM weight are left out there)."""
    if family != "sdxl":
        return {name: kohya_name(UNET_PREFIX, name) for name, _ in unet.named_modules() if name}
    from core.models.layout import unet_key_map

    config = dict(unet_config) if unet_config is not None else dict(unet.config)
    ldm_of = {d[: -len(".weight")]: ldm[: -len(".weight")]
              for ldm, d in unet_key_map(config).items() if d.endswith(".weight")}
    return {name: kohya_name(UNET_PREFIX, ldm_of[name]) for name, _ in unet.named_modules() if name in ldm_of}


def target_modules(unet: nn.Module, text_encoders: list[nn.Module]) -> list[tuple[int, str, nn.Module]]:
    """kohya's default LoRA targets as (component, module path, module): component 0 is the U-Net,
    1.. the text encoders in order. Linear and 1×1 Conv2d layers inside the target classes."""
    targets = []
    for component, (root, classes) in enumerate([(unet, UNET_TARGET_CLASSES)]
                                                + [(te, TE_TARGET_CLASSES) for te in text_encoders]):
        for name, module in root.named_modules():
            if type(module).__name__ not in classes:
                continue
            for child_name, child in module.named_modules():
                if child_name and (isinstance(child, nn.Linear)
                                   or (isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1))):
                    targets.append((component, f"{name}.{child_name}", child))
    return targets


# --- metadata ---------------------------------------------------------------------------------

def base_model_version(family: str, v_prediction: bool = False) -> str:
    """``ss_base_model_version``: ``sd_v1`` / ``sd_v2`` (``_v`` appended for v-prediction) or ``sdxl_base_v1-0``."""
    version = _BASE_MODEL_VERSION[family]
    return version + "_v" if v_prediction and family != "sdxl" else version


def metadata_text(key: str, value: Any) -> str:
    """A metadata value as kohya stores it: JSON keys through ``json.dumps`` (a string is taken as
    JSON already), everything else through ``str()``."""
    if key in JSON_KEYS:
        return value if isinstance(value, str) else json.dumps(value)
    return str(value)


def ss_values(**values: Any) -> dict[str, str]:
    """``ss_<name>`` → text for each keyword (``learning_rate=1e-4`` → ``{"ss_learning_rate": "0.0001"}``)."""
    return {f"ss_{name}": metadata_text(f"ss_{name}", value) for name, value in values.items()}


def training_metadata(*, output_name: str, family: str, network_dim: int, network_alpha: float,
                      network_module: str = "networks.lora", network_args: Mapping[str, Any] | None = None,
                      v_prediction: bool = False, session_id: int | None = None,
                      training_started_at: float | None = None, **values: Any) -> dict[str, str]:
    """The ``ss_*`` map of one training run, as ``train_network.py`` writes it.

    The keys that describe the network and the base model are filled in from the arguments
    (``ss_v2``, ``ss_base_model_version``, ``ss_network_*``; ``ss_network_args`` only when given;
    a random ``ss_session_id`` and the start time unless given). Every other key comes from
    ``values`` by its name without ``ss_`` (``learning_rate=1e-4``, ``resolution=(512, 512)``,
    ``tag_frequency={...}``, and per save ``steps``, ``epoch``, ``training_finished_at``).
    """
    meta = ss_values(
        session_id=session_id if session_id is not None else random.randint(0, 2**32),
        training_started_at=training_started_at if training_started_at is not None else time.time(),
        output_name=output_name,
        network_module=network_module, network_dim=network_dim, network_alpha=network_alpha,
        v2=family == "sd2", base_model_version=base_model_version(family, v_prediction),
    )
    if network_args:
        meta.update(ss_values(network_args=dict(network_args)))
    meta.update(ss_values(**values))
    return meta


def minimum_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """What ``--no_metadata`` keeps of the ``ss_*`` map."""
    return {k: v for k, v in metadata.items() if k in MINIMUM_KEYS}


# --- writing ----------------------------------------------------------------------------------

def safetensors_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(``sshs_model_hash``, ``sshs_legacy_hash``) of these tensors, as kohya precomputes them: both from
    an in-memory save holding only the ``ss_*`` metadata. The first equals the addnet hash of any file
    with these tensors; the second is the old 1 MiB-window hash of that in-memory save."""
    from safetensors.torch import save

    data = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    return addnet_hash_bytes(data), model_hash_old_bytes(data)


def save_lora(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a kohya LoRA ``.safetensors`` atomically: the tensors as given (cast them to the save dtype
    first: the hashes cover exactly these bytes), the metadata as strings plus both ``sshs_*`` hashes."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: metadata_text(k, v) for k, v in (metadata or {}).items()}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = safetensors_hashes(cpu, meta)
    return atomic_save_with(path, lambda tmp: save_file(cpu, tmp, metadata=meta))


# --- reading (the metadata viewer) ------------------------------------------------------------

def _date(value: Any) -> str | None:
    try:
        stamp = float(value)
    except (TypeError, ValueError):
        return None
    return datetime.datetime.fromtimestamp(stamp, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _present(value: Any) -> bool:
    return value is not None and str(value) not in ("", "None", "null")


def tag_frequency_rows(metadata: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(dataset dir, tag, count) from ``ss_tag_frequency``, each dir's tags by count, most first."""
    rows: list[tuple[str, str, int]] = []
    freq = metadata.get("ss_tag_frequency")
    if not isinstance(freq, dict):
        return rows
    for folder, tags in freq.items():
        if not isinstance(tags, dict):
            continue
        counted = []
        for tag, count in tags.items():
            try:
                counted.append((str(tag).strip(), int(count)))
            except (TypeError, ValueError):
                continue
        counted.sort(key=lambda tc: (-tc[1], tc[0]))
        rows.extend((str(folder), tag, count) for tag, count in counted)
    return rows


def dataset_dir_rows(metadata: dict[str, Any]) -> list[tuple[str, int, int, int, str]]:
    """(folder, repeats, images, images × repeats, "train"/"reg") from ``ss_dataset_dirs`` and
    ``ss_reg_dataset_dirs``; from ``ss_datasets`` subsets when only those are present."""
    rows: list[tuple[str, int, int, int, str]] = []
    for key, kind in (("ss_dataset_dirs", "train"), ("ss_reg_dataset_dirs", "reg")):
        dirs = metadata.get(key)
        if not isinstance(dirs, dict):
            continue
        for folder, info in dirs.items():
            if not isinstance(info, dict):
                continue
            repeats, images = _int(info.get("n_repeats")), _int(info.get("img_count"))
            rows.append((str(folder), repeats, images, repeats * images, kind))
    datasets = metadata.get("ss_datasets")
    if not rows and isinstance(datasets, list):
        for dataset in datasets:
            for subset in (dataset.get("subsets") or []) if isinstance(dataset, dict) else []:
                if not isinstance(subset, dict):
                    continue
                repeats, images = _int(subset.get("num_repeats")), _int(subset.get("img_count"))
                folder = str(subset.get("image_dir") or subset.get("metadata_file") or "")
                rows.append((folder, repeats, images, repeats * images, "reg" if subset.get("is_reg") else "train"))
    return rows


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def bucket_resolutions(metadata: dict[str, Any]) -> list[tuple[str, int]]:
    """("WxH", count) from ``ss_bucket_info``, most used first (counts include repeats)."""
    info = metadata.get("ss_bucket_info")
    counts: dict[str, int] = {}
    if isinstance(info, dict) and isinstance(info.get("buckets"), dict):
        for bucket in info["buckets"].values():
            try:
                w, h = bucket["resolution"]
                counts[f"{int(w)}x{int(h)}"] = counts.get(f"{int(w)}x{int(h)}", 0) + int(bucket.get("count", 0))
            except (KeyError, TypeError, ValueError):
                continue
    return sorted(counts.items(), key=lambda kv: -kv[1])


def lora_summary(metadata: dict[str, Any], *, sd_version: str, network_type: str, hash12: str,
                 file_size: int) -> list[tuple[str, str]]:
    """The facts a user looks for first (seed tutorial: base model, dims, repeats, epochs, lr)."""
    m = metadata
    out: list[tuple[str, str]] = []

    def add(label: str, *values: Any, sep: str = " / ") -> None:
        shown = [str(v) for v in values if _present(v)]
        if shown:
            out.append((label, sep.join(shown)))

    add("Output name", m.get("ss_output_name"))
    add("Base model version", m.get("ss_base_model_version") or sd_version)
    add("Base model", m.get("ss_sd_model_name"))
    add("Base model hash", m.get("ss_sd_model_hash"), m.get("ss_new_sd_model_hash"))
    add("VAE", m.get("ss_vae_name"))
    add("Network type", network_type)
    add("Network module", m.get("ss_network_module"))
    add("Network dim / alpha", m.get("ss_network_dim"), m.get("ss_network_alpha"))
    args = m.get("ss_network_args")
    if isinstance(args, dict) and args:
        add("Network args", ", ".join(f"{k}={v}" for k, v in args.items()))
    add("Resolution", m.get("ss_resolution"))
    buckets = bucket_resolutions(m)
    if buckets:
        add("Bucket resolutions", ", ".join(f"{r} ({n})" for r, n in buckets[:6]) + (", ..." if len(buckets) > 6 else ""))
    add("Clip skip", m.get("ss_clip_skip"))
    add("Epoch", m.get("ss_epoch"), m.get("ss_num_epochs"))
    add("Steps", m.get("ss_steps"), m.get("ss_max_train_steps"))
    add("Training images (with repeats)", m.get("ss_num_train_images"))
    images = sum(row[2] for row in dataset_dir_rows(m) if row[4] == "train")
    if images:
        add("Dataset size (images)", images)
    add("Regularization images", m.get("ss_num_reg_images") if _int(m.get("ss_num_reg_images")) else None)
    add("Batch size", m.get("ss_batch_size_per_device") or m.get("ss_total_batch_size"))
    lrs = [f"{name} {m.get(key)}" for name, key in (("lr", "ss_learning_rate"), ("unet", "ss_unet_lr"),
                                                       ("text encoder", "ss_text_encoder_lr")) if _present(m.get(key))]
    add("Learning rates", ", ".join(lrs))
    add("Optimizer", m.get("ss_optimizer"))
    add("LR scheduler", m.get("ss_lr_scheduler"))
    add("Mixed precision", m.get("ss_mixed_precision"))
    add("Noise offset", m.get("ss_noise_offset"))
    add("Seed", m.get("ss_seed"))
    add("Training started", _date(m.get("ss_training_started_at")))
    add("Training finished", _date(m.get("ss_training_finished_at")))
    add("Training comment", m.get("ss_training_comment"))
    add("Hash (Lora hashes)", hash12)
    add("File size", f"{file_size / 1e6:.1f} MB")
    return out


__all__ = [
    "ALPHA", "JSON_KEYS", "LORA_DOWN", "LORA_UP", "MINIMUM_KEYS", "SDXL_TE_PREFIXES", "TE_PREFIX",
    "TE_TARGET_CLASSES", "UNET_PREFIX", "UNET_TARGET_CLASSES", "base_model_version", "kohya_name",
    "metadata_text", "minimum_metadata", "safetensors_hashes", "save_lora", "ss_values", "target_modules",
    "te_name", "te_prefixes", "training_metadata", "unet_names", "bucket_resolutions", "dataset_dir_rows",
    "lora_summary", "tag_frequency_rows",
]
