"""A trainable kohya LoRA (``networks.lora``, LoCon with ``conv_dim``) or LyCORIS network
(``lycoris.kohya``: LoCon, LoHa, LoKr, see lycoris_net.py) over a frozen base model.

The modules are kohya's: for each target layer a ``lora_down`` (Linear, 1×1 or the layer's own
3×3 Conv) of ``network_dim`` outputs and a ``lora_up`` back to the layer's width, scaled by
``alpha / dim``; ``lora_down`` starts Kaiming-uniform and ``lora_up`` at zero, so step 0 is
the base model exactly. Targets and names are those of core/networks/kohya.py (the loader's
own rules), so the saved file is the one kohya writes and Kiln, the WebUI and ComfyUI load.

The base model is never written: the LoRA adds its output to a layer's output through a
forward hook while ``attached`` (the trainer detaches it at pause points, when generation jobs
of other users borrow the same shared model), which is the unfused runtime form training needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.errors import KilnError
from core.networks.kohya import ALPHA, LORA_DOWN, LORA_UP, target_modules, te_name, te_prefixes, unet_names

DORA_SCALE = "dora_scale"  # the magnitude key LyCORIS, the WebUI and ComfyUI read
# kohya networks/lora.py: 3×3 convolutions LoCon adds when conv_dim is given.
CONV3X3_TARGET_CLASSES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")


def _column_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W[:, j]‖ per input channel j, shaped [1, in, 1...]: DoRA's magnitude in the layout the
    WebUI and kohya read (core/networks/lora_formats.apply_weight_decompose)."""
    w = weight.float()
    rest = [1] * (w.dim() - 2)
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(1, w.shape[1], *rest)


class LoRAModule(nn.Module):
    def __init__(self, name: str, base: nn.Module, dim: int, alpha: float, dropout: float = 0.0,
                 rank_dropout: float = 0.0, module_dropout: float = 0.0, dora: bool = False):
        super().__init__()
        self.lora_name = name
        if isinstance(base, nn.Conv2d):
            in_dim, out_dim = base.in_channels, base.out_channels
            if dim > min(in_dim, out_dim) and base.kernel_size == (1, 1):
                raise KilnError(f"network_dim {dim} is larger than the layer {name} ({in_dim}→{out_dim})",
                                hint=f"use network_dim {min(in_dim, out_dim)} or less")
            self.lora_down = nn.Conv2d(in_dim, dim, base.kernel_size, base.stride, base.padding, bias=False)
            self.lora_up = nn.Conv2d(dim, out_dim, (1, 1), (1, 1), bias=False)
        elif isinstance(base, nn.Linear):
            in_dim, out_dim = base.in_features, base.out_features
            if dim > min(in_dim, out_dim):
                raise KilnError(f"network_dim {dim} is larger than the layer {name} ({in_dim}→{out_dim})",
                                hint=f"use network_dim {min(in_dim, out_dim)} or less")
            self.lora_down = nn.Linear(in_dim, dim, bias=False)
            self.lora_up = nn.Linear(dim, out_dim, bias=False)
        else:
            raise KilnError(f"{name}: a {type(base).__name__} cannot carry a LoRA")
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        alpha = dim if alpha is None or alpha == 0 else alpha
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.dim = dim
        self.scale = float(alpha) / dim
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.multiplier = 1.0
        # DoRA (Liu et al. 2024; LyCORIS's dora_wd): W' = (W + ΔW) · m / ‖W + ΔW‖ per input column,
        # m trained from ‖W‖. The base layer is only read (its weight is never written).
        self._base = (base,)  # a tuple: not registered, so the base weight is never a trained parameter
        self.dora_scale = nn.Parameter(_column_norm(base.weight.detach())) if dora else None

    @property
    def base_weight(self) -> torch.Tensor:
        return self._base[0].weight

    def delta_weight(self) -> torch.Tensor:
        """ΔW = up · down · alpha / dim as a full weight (float32), the layer's shape."""
        down, up = self.lora_down.weight.float(), self.lora_up.weight.float()
        if down.dim() == 2:
            return (up @ down) * self.scale
        return torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down) * self.scale

    def dora_input_scale(self) -> torch.Tensor:
        """s = m / ‖W + ΔW‖ per input channel: (W + ΔW)(s ⊙ x) is the DoRA layer's output."""
        merged = self.base_weight.detach().float() + self.delta_weight()
        return self.dora_scale / _column_norm(merged)

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """The DoRA forward at multiplier 1 without a second matmul: the layer and the LoRA both
        see s ⊙ x, so W(s⊙x) + ΔW(s⊙x) = W'x."""
        s = self.dora_input_scale().to(x.dtype)
        return x * (s.reshape(-1) if self.lora_down.weight.dim() == 2 else s)  # Linear: [..., in]; Conv: [B, in, H, W]

    def dora_difference(self, x: torch.Tensor) -> torch.Tensor:
        """(W' − W) x · multiplier, for a multiplier other than 1 (preview samples at a weight)."""
        w = self.base_weight.detach().float()
        merged = w + self.delta_weight()
        diff = (merged * (self.dora_scale / _column_norm(merged)) - w) * self.multiplier
        diff = diff.to(x.dtype)
        if diff.dim() == 2:
            return nn.functional.linear(x, diff)
        return nn.functional.conv2d(x, diff, None, self.lora_down.stride, self.lora_down.padding)

    def delta(self, x: torch.Tensor) -> torch.Tensor | float:
        # kohya networks/lora.py, in its order: module dropout skips the module, dropout acts on the
        # hidden units, rank dropout masks whole ranks per sample and rescales by 1 / (1 - p).
        if self.module_dropout and self.training and torch.rand(1) < self.module_dropout:
            return 0.0
        hidden = self.lora_down(x.to(self.lora_down.weight.dtype))
        if self.dropout and self.training:
            hidden = nn.functional.dropout(hidden, p=self.dropout)
        scale = self.scale
        if self.rank_dropout and self.training:
            mask = torch.rand((hidden.size(0), self.dim), device=hidden.device) > self.rank_dropout
            if hidden.dim() == 3:
                mask = mask.unsqueeze(1)
            elif hidden.dim() == 4:
                mask = mask.unsqueeze(-1).unsqueeze(-1)
            hidden = hidden * mask
            scale = self.scale / (1.0 - self.rank_dropout)
        return self.lora_up(hidden) * (self.multiplier * scale)

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        out = {LORA_DOWN: self.lora_down.weight, LORA_UP: self.lora_up.weight, ALPHA: self.alpha}
        if self.dora_scale is not None:
            out[DORA_SCALE] = self.dora_scale
        return out

    def load_saved_tensors(self, tensors: dict[str, torch.Tensor]) -> bool:
        down, up = tensors.get(LORA_DOWN), tensors.get(LORA_UP)
        if down is None or up is None or down.shape != self.lora_down.weight.shape \
                or up.shape != self.lora_up.weight.shape:
            return False
        magnitude = tensors.get(DORA_SCALE)
        if (self.dora_scale is None) != (magnitude is None) or (
                magnitude is not None and magnitude.shape != self.dora_scale.shape):
            return False
        with torch.no_grad():
            self.lora_down.weight.copy_(down)
            self.lora_up.weight.copy_(up)
            if magnitude is not None:
                self.dora_scale.copy_(magnitude)
        return True


@dataclass(frozen=True)
class NetworkSpec:
    network_dim: int = 4
    network_alpha: float = 1.0
    conv_dim: int | None = None  # LoCon: also the 3×3 convolutions of the U-Net
    conv_alpha: float | None = None
    network_dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    train_unet: bool = True
    train_text_encoder: bool = True
    network_module: str = "networks.lora"  # or "lycoris.kohya"
    algo: str = "lora"  # lycoris.kohya: locon, loha, lokr
    lycoris_args: tuple[tuple[str, Any], ...] = ()  # extra module arguments (factor, use_tucker, ...)
    network_args: tuple[tuple[str, str], ...] = ()  # the config's network_args, for ss_network_args
    dora_wd: bool = False  # DoRA: a trained magnitude per input column (network_args dora_wd=True)

    @property
    def is_lycoris(self) -> bool:
        return self.network_module == "lycoris.kohya"


def _dora_pre(lora: LoRAModule, args: tuple) -> tuple | None:
    # At multiplier 1 the layer runs on s ⊙ x (see LoRAModule.scale_input); otherwise unchanged.
    if lora.multiplier != 1.0:
        return None
    return (lora.scale_input(args[0]), *args[1:])


def _dora_post(lora: LoRAModule, args: tuple, out: torch.Tensor) -> torch.Tensor:
    if lora.multiplier == 1.0:
        return out + lora.delta(args[0])  # args[0] is already s ⊙ x
    return out + lora.dora_difference(args[0]) if lora.multiplier else out


class LoRANetwork(nn.Module):
    def __init__(self, unet: nn.Module, text_encoders: list[nn.Module], family: str, spec: NetworkSpec,
                 unet_config: dict | None = None):
        super().__init__()
        if spec.network_dim < 1:
            raise KilnError(f"network_dim must be 1 or more, not {spec.network_dim}")
        self.spec = spec
        self.family = family
        unet_name = unet_names(unet, family, unet_config)
        prefixes = te_prefixes(family, len(text_encoders))
        self.targets: list[tuple[Any, nn.Module, bool]] = []  # (module, base layer, is_text_encoder)
        modules: dict[str, nn.Module] = (self._lycoris_modules(unet, text_encoders, unet_name, prefixes, spec)
                                         if spec.is_lycoris else self._lora_modules(unet, text_encoders, unet_name,
                                                                                    prefixes, spec))
        if not modules:
            raise KilnError("no layer to train: the model has no attention layers Kiln can attach a LoRA to",
                            hint="check network_train_unet_only / network_train_text_encoder_only")
        self.loras = nn.ModuleDict({name.replace(".", "_"): module for name, module in modules.items()})
        self._hooks: list = []

    def _lora_modules(self, unet, text_encoders, unet_name, prefixes, spec: NetworkSpec) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {}
        drops = dict(dropout=spec.network_dropout, rank_dropout=spec.rank_dropout, module_dropout=spec.module_dropout,
                     dora=spec.dora_wd)
        for component, path, layer in target_modules(unet, text_encoders):
            is_te = component > 0
            if (is_te and not spec.train_text_encoder) or (not is_te and not spec.train_unet):
                continue
            name = te_name(prefixes[component - 1], path) if is_te else unet_name.get(path)
            if name is None:
                continue
            modules[name] = LoRAModule(name, layer, spec.network_dim, spec.network_alpha, **drops)
            self.targets.append((modules[name], layer, is_te))
        if spec.conv_dim and spec.train_unet:
            for path, block in unet.named_modules():
                if type(block).__name__ not in CONV3X3_TARGET_CLASSES:
                    continue
                for child_path, child in block.named_modules():
                    if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3):
                        name = unet_name.get(f"{path}.{child_path}")
                        if name is not None and name not in modules:
                            modules[name] = LoRAModule(name, child, spec.conv_dim, spec.conv_alpha or spec.conv_dim,
                                                       **drops)
                            self.targets.append((modules[name], child, False))
        return modules

    def _lycoris_modules(self, unet, text_encoders, unet_name, prefixes, spec: NetworkSpec) -> dict[str, nn.Module]:
        from core.training.lycoris_net import LycorisAdapter, te_targets, unet_targets

        modules: dict[str, nn.Module] = {}
        conv_dim = spec.conv_dim or spec.network_dim
        conv_alpha = spec.conv_alpha if spec.conv_alpha is not None else spec.network_alpha
        options = dict(dropout=spec.network_dropout, rank_dropout=spec.rank_dropout,
                       module_dropout=spec.module_dropout, module_args=dict(spec.lycoris_args))
        parts = ([(0, path, layer, unet_name.get(path)) for path, layer in unet_targets(unet)] if spec.train_unet
                 else [])
        if spec.train_text_encoder:
            parts += [(k, path, layer, te_name(prefixes[k - 1], path))
                      for k, te in enumerate(text_encoders, 1) for path, layer in te_targets(te)]
        for component, _path, layer, name in parts:
            if name is None or name in modules:
                continue
            wide = isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1)
            dim, alpha = (conv_dim, conv_alpha) if wide else (spec.network_dim, spec.network_alpha)
            modules[name] = LycorisAdapter(name, layer, spec.algo, dim, alpha, **options)
            self.targets.append((modules[name], layer, component > 0))
        return modules

    # ---- attaching to the base model

    def attach(self) -> None:
        if self._hooks:
            return
        for lora, layer, _ in self.targets:
            if getattr(lora, "dora_scale", None) is not None:
                self._hooks += [layer.register_forward_pre_hook(lambda _m, args, lora=lora: _dora_pre(lora, args)),
                                layer.register_forward_hook(lambda _m, args, out, lora=lora: _dora_post(lora, args, out))]
                continue
            self._hooks.append(layer.register_forward_hook(lambda _m, args, out, lora=lora: out + lora.delta(args[0])))

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @contextmanager
    def attached(self) -> Iterator[LoRANetwork]:
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    def set_multiplier(self, multiplier: float) -> None:
        for lora, _, _ in self.targets:
            lora.multiplier = multiplier

    # ---- parameters

    def param_groups(self, unet_lr: float | None, text_encoder_lr: float | None, default_lr: float) -> list[dict]:
        """kohya's groups: text-encoder LoRAs at ``text_encoder_lr``, U-Net ones at ``unet_lr``
        (each falling back to ``learning_rate``); a group whose LR is 0 is left out (frozen)."""
        groups = []
        for is_te, lr in ((True, text_encoder_lr), (False, unet_lr)):
            params = [p for lora, _, te in self.targets if te == is_te for p in lora.parameters()]
            lr = default_lr if lr is None else lr
            if params and lr != 0:
                groups.append({"params": params, "lr": lr, "name": "text_encoder" if is_te else "unet"})
        if not groups:
            raise KilnError("nothing to train: both learning rates are 0 or the chosen parts have no LoRA layers")
        return groups

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """``<lora_name>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` as kohya saves (LyCORIS:
        ``.hada_w1_a`` ... / ``.lokr_w1`` ... as lycoris saves)."""
        out = {}
        for lora, _, _ in self.targets:
            for key, tensor in lora.saved_tensors().items():
                t = tensor.detach().to("cpu")
                out[f"{lora.lora_name}.{key}"] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out

    def load_kohya_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Continue from a saved LoRA (kohya's ``network_weights``): every module's weights must be there."""
        missing = []
        for lora, _, _ in self.targets:
            prefix = lora.lora_name + "."
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not lora.load_saved_tensors(own):
                missing.append(lora.lora_name)
        if missing:
            raise KilnError(f"the LoRA file does not match this network: {len(missing)} modules missing or of "
                            f"another rank (e.g. {missing[0]})", hint="use the same network_dim and targets")
