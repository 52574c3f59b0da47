"""LyCORIS networks (``network_module = "lycoris.kohya"``, ``network_args = ["algo=loha"]``...).

The math is lycoris-lora's own modules (LoCon, LoHa, LoKr: the library the files come from, so
their tensors, shapes and init are the ones kohya + LyCORIS write). What Kiln does itself is
the part lycoris would do by replacing the base layers' ``forward``: here each module only adds
its ``bypass_forward_diff`` to the layer's output through the same forward hook the LoRA uses,
so the shared base model is never modified and generation jobs can borrow it between steps.
(lycoris's own network builder is not used: 4.x registers the U-Net's time-embedding layers
twice on diffusers U-Nets and asserts.)

Targets follow lycoris's ``full`` preset: every Linear / Conv inside the U-Net's transformer,
ResNet and up/down-sampling blocks plus conv_in / conv_out / time embedding; the text encoder's
attention and MLP layers. 1×1 convolutions and linears use ``network_dim``, larger kernels
``conv_dim`` (lycoris defaults it to ``network_dim``).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from core.errors import KilnError

UNET_CLASSES = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
UNET_NAMES = ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2")
TE_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")

ALGOS = {"locon": ("lycoris.modules.locon", "LoConModule"),
         "loha": ("lycoris.modules.loha", "LohaModule"),
         "lokr": ("lycoris.modules.lokr", "LokrModule")}

# network_args Kiln passes through to lycoris's modules (values as lycoris's kohya entry point reads them).
MODULE_ARGS = {"factor": int, "use_tucker": "bool", "use_scalar": "bool", "decompose_both": "bool",
               "full_matrix": "bool", "rs_lora": "bool", "unbalanced_factorization": "bool"}


def module_class(algo: str) -> type[nn.Module]:
    if algo not in ALGOS:
        raise KilnError(f"LyCORIS algo {algo!r} is not one Kiln trains", hint="use algo=locon, loha or lokr")
    module, name = ALGOS[algo]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise KilnError(f"LyCORIS training needs the lycoris-lora package ({exc})",
                        hint="pip install lycoris-lora (./launch.sh installs it)") from exc


def parse_module_args(pairs: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in MODULE_ARGS.items():
        if key not in pairs:
            continue
        raw = pairs[key]
        if kind == "bool":
            out[key] = raw.strip().lower() in ("1", "true", "yes")
        else:
            try:
                out[key] = kind(raw)
            except ValueError:
                raise KilnError(f"network_args: {key}={raw!r} is not a {kind.__name__}") from None
    if pairs.get("disable_conv_cp", "true").lower() in ("false", "0") or "use_conv_cp" in pairs or "use_cp" in pairs:
        out["use_tucker"] = True
    return out


def _is_weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def unet_targets(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module path, layer) in lycoris's walk order, each layer once."""
    found: dict[str, nn.Module] = {}
    for path, block in unet.named_modules():
        if type(block).__name__ in UNET_CLASSES:
            for child_path, child in block.named_modules():
                if _is_weighted(child):
                    found.setdefault(f"{path}.{child_path}" if child_path else path, child)
        elif path in UNET_NAMES and _is_weighted(block):
            found.setdefault(path, block)
    return list(found.items())


def te_targets(text_encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    found: dict[str, nn.Module] = {}
    for path, block in text_encoder.named_modules():
        if type(block).__name__ in TE_CLASSES:
            for child_path, child in block.named_modules():
                if isinstance(child, nn.Linear):
                    found.setdefault(f"{path}.{child_path}", child)
    return list(found.items())


class LycorisAdapter(nn.Module):
    """One lycoris module, used for its delta only (the layer's own forward runs unchanged)."""

    def __init__(self, name: str, base: nn.Module, algo: str, dim: int, alpha: float, *, dropout: float = 0.0,
                 rank_dropout: float = 0.0, module_dropout: float = 0.0, module_args: dict[str, Any] | None = None):
        super().__init__()
        self.lora_name = name
        self.module = module_class(algo)(name, base, multiplier=1.0, lora_dim=dim, alpha=alpha, dropout=dropout,
                                         rank_dropout=rank_dropout, module_dropout=module_dropout,
                                         **(module_args or {}))
        self.module_dropout = module_dropout
        self.multiplier = 1.0

    def delta(self, x: torch.Tensor) -> torch.Tensor | float:
        # kohya / lycoris module dropout: skip the whole module for this step with probability p.
        if self.module_dropout and self.training and torch.rand(1) < self.module_dropout:
            return 0.0
        return self.module.bypass_forward_diff(x, scale=self.multiplier)

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """The module's tensors under lycoris's key suffixes (``hada_w1_a``, ``lokr_w1``, ``alpha`` ...)."""
        return dict(self.module.state_dict())

    def load_saved_tensors(self, tensors: dict[str, torch.Tensor]) -> bool:
        own = self.module.state_dict()
        if set(own) - set(tensors) or any(tensors[k].shape != v.shape for k, v in own.items()):
            return False
        self.module.load_state_dict({k: tensors[k] for k in own})
        return True
