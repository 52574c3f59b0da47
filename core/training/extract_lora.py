"""A LoRA extracted from the difference of two checkpoints (kohya's ``extract_lora_from_models.py``).

For every layer kohya's LoRA would target, the weight difference ``tuned − base`` (a 3×3 conv
flattened to out × in·k·k) is factored by SVD and cut to ``rank`` (``conv_rank`` for 3×3 convs):
``up = U·S``, ``down = Vᴴ``. As kohya does, both factors are then clamped to ±the
``clamp_quantile`` quantile of their joined values, which trims the few outliers that would
otherwise dominate an fp16 file. ``alpha`` is the rank, so the loader's scale is 1 and
``up @ down`` is the approximated difference. The text encoders are included only when some
weight of theirs differs by more than ``min_diff`` (kohya's test: a U-Net-only fine-tune leaves
them as they were, and their LoRA would be noise).

Kiln's one departure: ``clamp_quantile`` 1 means no clamping (kohya clamps at ±max there, which
still cuts a negative value below −max).

Targets and names are core/networks/kohya.py's (the trainer's and loader's rules): Linear and 1×1
convs in the U-Net's transformers and CLIP's attention / MLP; with ``conv_rank`` also the layers of
the U-Net's ResNet, down- and up-sampling blocks, as kohya's LoCon targets them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import KilnError
from core.networks.kohya import (
    ALPHA,
    LORA_DOWN,
    LORA_UP,
    save_lora,
    target_modules,
    te_name,
    te_prefixes,
    training_metadata,
    unet_names,
)
from core.training.lora import SAVE_DTYPES
from core.training.network import CONV3X3_TARGET_CLASSES

TORCH_QUANTILE_LIMIT = 2**24  # torch.quantile refuses larger inputs


@dataclass(frozen=True)
class ExtractedLora:
    path: Path | None
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    unet_modules: int
    te_modules: int


def _as_model(model: Any) -> Any:
    if isinstance(model, str | Path):
        from core.models.checkpoint import load_checkpoint

        return load_checkpoint(model)
    return model


def lora_layers(model: Any, *, conv: bool) -> dict[str, tuple[nn.Module, bool]]:
    """kohya name → (layer, is_text_encoder) for every layer an extracted LoRA covers."""
    unet, encoders, family = model.unet, model.text_encoders, model.spec.family
    names = unet_names(unet, family, model.spec.unet_config)
    prefixes = te_prefixes(family, len(encoders))
    out: dict[str, tuple[nn.Module, bool]] = {}
    for component, path, layer in target_modules(unet, encoders):
        name = te_name(prefixes[component - 1], path) if component else names.get(path)
        if name is not None:
            out[name] = (layer, component > 0)
    if conv:
        for path, block in unet.named_modules():
            if type(block).__name__ not in CONV3X3_TARGET_CLASSES:
                continue
            for child_path, child in block.named_modules():
                if isinstance(child, nn.Linear | nn.Conv2d) and child_path:
                    name = names.get(f"{path}.{child_path}")
                    if name is not None:
                        out.setdefault(name, (child, False))
    return out


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    if values.numel() <= TORCH_QUANTILE_LIMIT:
        return torch.quantile(values, q)
    # torch.quantile's linear interpolation, by sorting (it has an input-size limit)
    ordered = values.sort().values
    position = q * (ordered.numel() - 1)
    low = int(math.floor(position))
    high = min(low + 1, ordered.numel() - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def factor(diff: torch.Tensor, rank: int, clamp_quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with ``up @ down ≈ diff`` at ``rank``, shaped for the layer (conv: 4-D)."""
    out_dim, in_dim = diff.shape[:2]
    kernel = tuple(diff.shape[2:]) if diff.ndim == 4 else None
    rank = min(rank, out_dim, diff[0].numel())
    mat = diff.reshape(out_dim, -1).float()
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if clamp_quantile < 1:
        hi = _quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    if kernel is not None:
        up, down = up.reshape(out_dim, rank, 1, 1), down.reshape(rank, in_dim, *kernel)
    return up.contiguous(), down.contiguous()


def lora_metadata(base: Any, tuned: Any, *, rank: int, conv_rank: int | None, output_name: str,
                  clamp_quantile: float, min_diff: float, comment: str | None = None) -> dict[str, str]:
    """The ``ss_*`` map as the LoRA trainer writes it (kohya's minimum keys included), and modelspec."""
    spec = base.spec
    v_pred = spec.prediction_type == "v_prediction"
    network_args = {"conv_dim": str(conv_rank), "conv_alpha": str(float(conv_rank))} if conv_rank else None
    name = lambda m: m.path.name if getattr(m, "path", None) else None  # noqa: E731
    meta = training_metadata(output_name=output_name, family=spec.family, network_dim=rank,
                             network_alpha=float(rank), network_args=network_args, v_prediction=v_pred,
                             sd_model_name=name(base), training_comment=comment or
                             f"extracted from {name(tuned)} against {name(base)} (SVD, clamp_quantile "
                             f"{clamp_quantile:g}, min_diff {min_diff:g})", sd_scripts_commit_hash="kiln")
    arch = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-768-v", "sdxl": "stable-diffusion-xl-v1-base"}
    meta.update({"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": f"{arch[spec.family]}/lora",
                 "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts", "modelspec.title": output_name,
                 "modelspec.prediction_type": "v" if v_pred else "epsilon",
                 "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return meta


def extract_lora(base: Any, tuned: Any, rank: int = 4, conv_rank: int | None = None, clamp_quantile: float = 0.99,
                 *, min_diff: float = 0.01, save_to: str | Path | None = None, save_precision: str | None = None,
                 device: str | torch.device | None = None, output_name: str | None = None,
                 on_layer: Callable[[int, int], None] | None = None) -> ExtractedLora:
    """The LoRA of ``tuned − base`` (LoadedModels or checkpoint paths); written to ``save_to`` when given."""
    if rank < 1:
        raise KilnError(f"rank: must be 1 or more, not {rank}")
    if conv_rank is not None and conv_rank < 1:
        conv_rank = None  # 0 in a form means "no conv layers"
    if not 0 < clamp_quantile <= 1:
        raise KilnError(f"clamp_quantile: must be in (0, 1], not {clamp_quantile}")
    if save_precision not in SAVE_DTYPES:
        raise KilnError(f"save_precision: {save_precision!r} is not one of float, fp16, bf16")
    base, tuned = _as_model(base), _as_model(tuned)
    if base.spec.family != tuned.spec.family:
        raise KilnError(f"the models are of different families ({base.spec.family} and {tuned.spec.family})",
                        hint="extract from a fine-tune of the same base model")
    base_layers = lora_layers(base, conv=conv_rank is not None)
    tuned_layers = lora_layers(tuned, conv=conv_rank is not None)
    if base_layers.keys() != tuned_layers.keys():
        raise KilnError("the models' layers differ (SD1 against SD2, or another U-Net)",
                        hint="extract from a fine-tune of the same base model")
    diffs: dict[str, tuple[torch.Tensor, bool]] = {}
    te_differs = False
    with torch.no_grad():
        for name, (layer, is_te) in tuned_layers.items():
            weight = layer.weight
            diff = weight.float() - base_layers[name][0].weight.to(weight.device).float()
            if device is not None:
                diff = diff.to(device)
            if is_te and not te_differs and diff.abs().max() > min_diff:
                te_differs = True
            diffs[name] = (diff, is_te)
        tensors: dict[str, torch.Tensor] = {}
        dtype = SAVE_DTYPES[save_precision]
        counts = [0, 0]
        todo = [(n, d, te) for n, (d, te) in diffs.items() if te_differs or not te]
        for i, (name, diff, is_te) in enumerate(todo):
            wide = diff.ndim == 4 and tuple(diff.shape[2:]) != (1, 1)
            layer_rank = conv_rank if wide and conv_rank is not None else rank
            up, down = factor(diff, layer_rank, clamp_quantile)
            save = (lambda t: t.cpu().to(dtype)) if dtype is not None else (lambda t: t.cpu())
            tensors[f"{name}.{LORA_UP}"] = save(up)
            tensors[f"{name}.{LORA_DOWN}"] = save(down)
            # alpha = the layer's rank: scale 1, up @ down is the difference itself
            tensors[f"{name}.{ALPHA}"] = torch.tensor(float(down.shape[0]))
            counts[is_te] += 1
            if on_layer is not None:
                on_layer(i + 1, len(todo))
    title = output_name or (Path(save_to).stem if save_to else "extracted")
    meta = lora_metadata(base, tuned, rank=rank, conv_rank=conv_rank, output_name=title,
                         clamp_quantile=clamp_quantile, min_diff=min_diff)
    meta["ss_text_encoder_extracted"] = str(te_differs)
    path = None
    if save_to is not None:
        path = Path(save_to)
        if path.suffix.lower() != ".safetensors":
            raise KilnError("save_to: the LoRA is written as .safetensors", path=path)
        save_lora(path, tensors, meta)
    return ExtractedLora(path, tensors, meta, counts[0], counts[1])


def lora_output_path(config: Any, lora_dir: Path) -> Path:
    return Path(lora_dir) / f"{config.output_name}.safetensors"


def extract_after_training(config: Any, trained: Any, saved: Path, lora_dir: Path) -> Path:
    """The DreamBooth run's LoRA: its checkpoint against the base file it was trained from (the saved
    file with EMA, whose weights are not the ones in memory)."""
    from core.models.checkpoint import load_checkpoint

    path = lora_output_path(config, lora_dir)
    if path.exists():
        raise KilnError("extract_lora: a LoRA of this output_name is already there; the checkpoint was saved",
                        path=path, hint="extract by hand with python -m core.training extract-lora")
    if getattr(trained, "path", None) is None:
        raise KilnError("extract_lora: the base checkpoint's file is not known")
    base = load_checkpoint(trained.path)
    tuned = load_checkpoint(saved) if config.use_ema else trained
    result = extract_lora(base, tuned, config.extract_lora_dim, config.extract_conv_dim,
                          config.extract_clamp_quantile, save_to=path,
                          save_precision=config.save_precision, output_name=config.output_name)
    return result.path
