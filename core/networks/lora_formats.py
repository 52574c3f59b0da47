"""LoRA / LyCORIS file keys → model modules, and each network type's weight delta.

The numbers follow the WebUI (AUTOMATIC1111 v1.10.1, ``extensions-builtin/Lora``):

* a file key is ``<module name>.<part>``; the parts of one module are grouped and the first
  network type whose required parts are all present wins, in the WebUI's order
  (LoRA/LoCon, LoHa, IA3, LoKr, Full, Norm, GLoRA, OFT/BOFT — the last in core.networks.oft);
* ``finalize``: reshape to the target, add a stored ``bias``, times ``calc_scale``
  (``scale`` if stored, else alpha/dim when both are known, else 1; always 1 for OFT, whose
  alpha is a constraint), DoRA re-normalisation,
  then times the multiplier (text-encoder multiplier for text-encoder modules, U-Net
  multiplier for U-Net modules); an extra bias delta is multiplied by the multiplier only.

Kiln computes every delta in float32 (the WebUI uses the model dtype) and the caller casts
once when it writes the merged weight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from core.networks.kohya import SDXL_TE_PREFIXES, TE_PREFIX, UNET_PREFIX, kohya_name
from core.networks.oft import OFT_PARTS, oft_updown

UNET = "unet"
# sd-scripts' OFT trainer names its U-Net modules oft_unet_* (else the same as lora_unet_*).
OFT_UNET_PREFIX = "oft_unet_"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"

# Layers whose weights a network may change (the WebUI patches exactly these types).
PATCHABLE_TYPES = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class ModuleTarget:
    """One layer of the loaded model: which component and its dotted module path there."""

    component: str  # UNET | TEXT_ENCODER | TEXT_ENCODER_2
    module: str

    @property
    def is_text_encoder(self) -> bool:
        return self.component != UNET


class ModuleIndex:
    """Every name a network file may use for a patchable layer of one loaded model.

    kohya names are the module path with ``.`` → ``_`` behind a prefix: ``lora_unet_``
    (diffusers U-Net names, or the original LDM/SGM names through ``unet_key_map``),
    ``lora_te_`` (SD1/SD2 CLIP), ``lora_te1_``/``lora_te2_`` (SDXL CLIP-L / bigG). Text
    encoder names are written with the transformers 4.x ``text_model.`` level, which the
    5.x classes no longer have; both spellings are indexed.
    """

    def __init__(self, unet: nn.Module, text_encoders: list[nn.Module], family: str,
                 unet_key_map: dict[str, str] | None = None):
        self.family = family
        self.components: dict[str, nn.Module] = {UNET: unet}
        if text_encoders:
            self.components[TEXT_ENCODER] = text_encoders[0]
        if len(text_encoders) > 1:
            self.components[TEXT_ENCODER_2] = text_encoders[1]
        self.modules: dict[ModuleTarget, nn.Module] = {}
        self.kohya: dict[str, ModuleTarget] = {}
        for component, model in self.components.items():
            for name, module in model.named_modules():
                if isinstance(module, PATCHABLE_TYPES) and getattr(module, "weight", None) is not None:
                    self.modules[ModuleTarget(component, name)] = module
        for target in self.modules:
            for prefix in self._kohya_prefixes(target.component):
                for spelling in _text_model_spellings(target) if target.is_text_encoder else (target.module,):
                    self.kohya.setdefault(kohya_name(prefix, spelling), target)
        if unet_key_map:
            self._add_ldm_unet_names(unet_key_map)

    def _kohya_prefixes(self, component: str) -> tuple[str, ...]:
        if component == UNET:
            return (UNET_PREFIX,)
        if component == TEXT_ENCODER_2:
            return (SDXL_TE_PREFIXES[1],)
        if self.family == "sdxl":
            return (SDXL_TE_PREFIXES[0],)
        # SD1/SD2: kohya writes lora_te_; the WebUI also accepts lora_te1_ on SD1 models.
        return (TE_PREFIX, SDXL_TE_PREFIXES[0])

    def _add_ldm_unet_names(self, unet_key_map: dict[str, str]) -> None:
        for ldm_key, diffusers_key in unet_key_map.items():
            if not ldm_key.endswith(".weight") or not diffusers_key.endswith(".weight"):
                continue
            target = ModuleTarget(UNET, diffusers_key[: -len(".weight")])
            if target in self.modules:
                self.kohya.setdefault(kohya_name(UNET_PREFIX, ldm_key[: -len(".weight")]), target)

    def resolve_kohya(self, base: str) -> ModuleTarget | None:
        if base.startswith(OFT_UNET_PREFIX):
            base = UNET_PREFIX + base[len(OFT_UNET_PREFIX):]
        return self.kohya.get(base)

    def resolve_dotted(self, component: str, path: str) -> ModuleTarget | None:
        for spelling in (path, path.removeprefix("text_model.")):
            target = ModuleTarget(component, spelling)
            if target in self.modules:
                return target
        return None


def _text_model_spellings(target: ModuleTarget) -> tuple[str, ...]:
    name = target.module
    if name.startswith("text_model."):
        return (name,)
    return ("text_model." + name, name)


# --- file keys → (module, part) -------------------------------------------------------------

# Part names of diffusers / PEFT files, mapped to the kohya part names the types use.
_DOTTED_PARTS = (
    ("lora_linear_layer.down.weight", "lora_down.weight"),
    ("lora_linear_layer.up.weight", "lora_up.weight"),
    ("lora.down.weight", "lora_down.weight"),
    ("lora.up.weight", "lora_up.weight"),
    ("lora_A.weight", "lora_down.weight"),
    ("lora_B.weight", "lora_up.weight"),
    ("lora_magnitude_vector", "dora_scale"),
    ("down.weight", "lora_down.weight"),
    ("up.weight", "lora_up.weight"),
    ("alpha", "alpha"),
)
_DOTTED_PREFIXES = (
    ("text_encoder_2.", TEXT_ENCODER_2),
    ("text_encoder.", TEXT_ENCODER),
    ("unet.", UNET),
    ("base_model.model.", UNET),
)
_DIFFUSERS_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "conv_norm_out",
                         "time_embedding.", "add_embedding.")
_PEFT_ADAPTER_NAME = re.compile(r"\.(lora_[AB]|lora_magnitude_vector)\.[A-Za-z0-9_]+(\.weight)?$")
_OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")


def is_dotted_key(key: str) -> bool:
    """True for diffusers/PEFT keys (dotted module paths) rather than kohya ``lora_*`` names."""
    return key.startswith(tuple(p for p, _ in _DOTTED_PREFIXES)) or key.startswith(_DIFFUSERS_UNET_ROOTS) \
        or key.startswith("text_model.")


def split_kohya_key(key: str) -> tuple[str, str]:
    """``lora_unet_x_y.lora_up.weight`` → (``lora_unet_x_y``, ``lora_up.weight``): split at the first dot."""
    base, _, part = key.partition(".")
    return base, part


def split_dotted_key(key: str) -> tuple[str, str, str] | None:
    """A diffusers/PEFT key → (component, module path, kohya part name), or None if unknown."""
    component = UNET
    rest = key
    for prefix, comp in _DOTTED_PREFIXES:
        if rest.startswith(prefix):
            component, rest = comp, rest[len(prefix):]
            break
    else:
        if rest.startswith("text_model."):
            component = TEXT_ENCODER
    # PEFT keeps the adapter name when a file is saved with it: lora_A.default.weight
    m = _PEFT_ADAPTER_NAME.search(rest)
    if m:
        rest = rest[: m.start()] + "." + m.group(1) + (".weight" if m.group(1) != "lora_magnitude_vector" else "")
    for suffix, part in _DOTTED_PARTS:
        if rest.endswith("." + suffix):
            path = rest[: -len(suffix) - 1]
            old = _OLD_PROCESSOR.search(path)
            if old:
                # diffusers' old attention-processor LoRA: attn1.processor.to_out_lora → attn1.to_out.0
                proj = old.group(1)
                path = path[: old.start()] + "." + ("to_out.0" if proj == "to_out" else proj)
            return component, path, part
    return None


@dataclass
class MatchResult:
    """A network file's tensors grouped per target layer of one model."""

    modules: dict[ModuleTarget, dict[str, torch.Tensor]] = field(default_factory=dict)
    first_key: dict[ModuleTarget, str] = field(default_factory=dict)
    part_keys: dict[ModuleTarget, dict[str, str]] = field(default_factory=dict)  # part → file key
    matched_keys: int = 0
    unmatched_keys: dict[str, str] = field(default_factory=dict)  # file key → module name tried

    @property
    def unmatched_modules(self) -> list[str]:
        return sorted(set(self.unmatched_keys.values()))


def peft_scale(adapter_metadata: dict, component: str, path: str, rank: int) -> float | None:
    """alpha/r from a diffusers ``lora_adapter_metadata`` (PEFT LoraConfig) for one layer, or None.

    diffusers writes the config per component (``unet.lora_alpha``...) or unprefixed; files
    without it were trained with alpha = r (scale 1), which is what diffusers assumes too.
    """
    def get(name: str):
        return adapter_metadata.get(f"{component}.{name}", adapter_metadata.get(name))

    alpha = get("lora_alpha")
    if alpha is None:
        return None
    for pattern, value in (get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", path):
            alpha = value
            break
    return float(alpha) / (math.sqrt(rank) if get("use_rslora") else rank)


def match_state_dict(state_dict: dict[str, torch.Tensor], index: ModuleIndex,
                     adapter_metadata: dict | None = None) -> MatchResult:
    """Group ``state_dict`` by target layer; keys that name no layer of this model are counted.

    ``adapter_metadata``: the decoded ``lora_adapter_metadata`` of a diffusers/PEFT file, whose
    lora_alpha gives those layers their scale (stored as a ``scale`` part).
    """
    result = MatchResult()
    dotted_paths: dict[ModuleTarget, tuple[str, str]] = {}
    for key, tensor in state_dict.items():
        target: ModuleTarget | None = None
        if is_dotted_key(key):
            parsed = split_dotted_key(key)
            if parsed is None:
                result.unmatched_keys[key] = key
                continue
            component, path, part = parsed
            target = index.resolve_dotted(component, path)
            tried = f"{component}.{path}"
            if target is not None:
                dotted_paths[target] = (component, path)
        else:
            base, part = split_kohya_key(key)
            if part in ("lora_A.weight", "lora_B.weight"):
                part = "lora_down.weight" if part == "lora_A.weight" else "lora_up.weight"
            target = index.resolve_kohya(base)
            tried = base
        if target is None:
            result.unmatched_keys[key] = tried
            continue
        result.modules.setdefault(target, {})[part] = tensor
        result.first_key.setdefault(target, key)
        result.part_keys.setdefault(target, {})[part] = key
        result.matched_keys += 1
    if adapter_metadata:
        for target, (component, path) in dotted_paths.items():
            parts = result.modules[target]
            if "lora_down.weight" in parts and "alpha" not in parts and "scale" not in parts:
                scale = peft_scale(adapter_metadata, component, path, parts["lora_down.weight"].shape[0])
                if scale is not None:
                    parts["scale"] = torch.tensor(scale)
    return result


def split_bundle_embeddings(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Separate ``bundle_emb.<name>.*`` (textual inversions shipped inside a LoRA) from the rest.

    Returns (network tensors, {name: embedding data}); the data has the layout of a TI file
    (``{"string_to_param": {"*": t}}`` or ``{"clip_l": t, "clip_g": t}``).
    """
    tensors: dict[str, torch.Tensor] = {}
    bundles: dict[str, dict] = {}
    for key, tensor in state_dict.items():
        if not key.startswith("bundle_emb.") or key.count(".") < 2:
            tensors[key] = tensor
            continue
        _, name, vec_name = key.split(".", 2)
        data = bundles.setdefault(name, {})
        if vec_name.startswith("string_to_param."):
            data["string_to_param"] = {vec_name.split(".", 1)[1]: tensor}
        else:
            data[vec_name] = tensor
    return tensors, bundles


# --- network types --------------------------------------------------------------------------

def network_type(parts: dict[str, torch.Tensor]) -> str | None:
    """The WebUI's module type for one layer's tensors (first type whose parts are present)."""
    if "lora_up.weight" in parts and "lora_down.weight" in parts:
        return "lora"
    if all(k in parts for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        return "loha"
    if "weight" in parts:
        return "ia3"
    has_1 = "lokr_w1" in parts or ("lokr_w1_a" in parts and "lokr_w1_b" in parts)
    has_2 = "lokr_w2" in parts or ("lokr_w2_a" in parts and "lokr_w2_b" in parts)
    if has_1 and has_2:
        return "lokr"
    if "diff" in parts:
        return "full"
    if "w_norm" in parts and "b_norm" in parts:
        return "norm"
    if all(k in parts for k in ("a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight")):
        return "glora"
    if any(p in parts for p in OFT_PARTS):
        return "oft"  # BOFT too: the same module in the WebUI, told apart by the tensor's rank
    return None


SUPPORTED_TYPES = ("lora", "loha", "ia3", "lokr", "full", "norm", "glora", "oft")


class UnsupportedNetworkType(ValueError):
    """A layer whose tensors form no supported network type."""


def _f32(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32)


def _rebuild_conventional(up: torch.Tensor, down: torch.Tensor, shape: list[int],
                          dyn_dim: int | None = None) -> torch.Tensor:
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    if dyn_dim is not None:
        # DyLoRA: keep the first dyn_dim ranks (alpha/dim still uses the stored rank, as the WebUI)
        up = up[:, :dyn_dim]
        down = down[:dyn_dim, :]
    return (up @ down).reshape(shape)


def _rebuild_cp(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return torch.einsum("n m k l, i n, m j -> i j k l", mid, up, down)


def _make_weight_cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


@dataclass
class _Delta:
    updown: torch.Tensor
    output_shape: list[int]
    dim: int | None = None
    ex_bias: torch.Tensor | None = None
    scale: float | None = None  # the type's own scale instead of calc_scale (OFT: 1)


def _lora(p: dict[str, torch.Tensor], orig: torch.Tensor, dyn_dim: int | None) -> _Delta:
    dev = orig.device
    up = _f32(p["lora_up.weight"], dev)
    down = _f32(p["lora_down.weight"], dev)
    if orig.dim() == 2:
        # a conv-shaped (1×1) LoRA on a linear layer: the WebUI flattens to 2-D first
        up = up.reshape(up.shape[0], -1)
        down = down.reshape(down.shape[0], -1)
    dim = p["lora_down.weight"].shape[0]
    output_shape = [up.size(0), down.size(1)]
    mid = p.get("lora_mid.weight")
    if mid is not None:
        mid = _f32(mid, dev)
        updown = _rebuild_cp(up, down, mid)
        output_shape += list(mid.shape[2:])
    else:
        if down.dim() == 4:
            output_shape += list(down.shape[2:])
        updown = _rebuild_conventional(up, down, output_shape, dyn_dim)
    return _Delta(updown, output_shape, dim)


def _loha(p: dict[str, torch.Tensor], orig: torch.Tensor, dyn_dim: int | None) -> _Delta:
    dev = orig.device
    w1a, w1b = _f32(p["hada_w1_a"], dev), _f32(p["hada_w1_b"], dev)
    w2a, w2b = _f32(p["hada_w2_a"], dev), _f32(p["hada_w2_b"], dev)
    output_shape = [w1a.size(0), w1b.size(1)]
    if "hada_t1" in p:
        output_shape = [w1a.size(1), w1b.size(1)]
        t1 = _f32(p["hada_t1"], dev)
        updown1 = _make_weight_cp(t1, w1a, w1b)
        output_shape += list(t1.shape[2:])
    else:
        if w1b.dim() == 4:
            output_shape += list(w1b.shape[2:])
        updown1 = _rebuild_conventional(w1a, w1b, output_shape)
    if "hada_t2" in p:
        updown2 = _make_weight_cp(_f32(p["hada_t2"], dev), w2a, w2b)
    else:
        updown2 = _rebuild_conventional(w2a, w2b, output_shape)
    return _Delta(updown1 * updown2, output_shape, w1b.shape[0])


def _ia3(p: dict[str, torch.Tensor], orig: torch.Tensor, dyn_dim: int | None) -> _Delta:
    w = _f32(p["weight"], orig.device)
    on_input = bool(p["on_input"].item()) if "on_input" in p else False
    output_shape = [w.size(0), orig.size(1)]
    if on_input:
        output_shape.reverse()
        w = w.reshape(1, -1, *([1] * (orig.dim() - 2)))
    else:
        w = w.reshape(-1, *([1] * (orig.dim() - 1)))
    return _Delta(orig * w, output_shape)


def _make_kron(shape: list[int], w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return torch.kron(w1, w2.contiguous()).reshape(shape)


def _lokr(p: dict[str, torch.Tensor], orig: torch.Tensor, dyn_dim: int | None) -> _Delta:
    dev = orig.device
    dim = None
    if "lokr_w1" in p:
        w1 = _f32(p["lokr_w1"], dev)
    else:
        w1 = _f32(p["lokr_w1_a"], dev) @ _f32(p["lokr_w1_b"], dev)
        dim = p["lokr_w1_b"].shape[0]
    if "lokr_w2" in p:
        w2 = _f32(p["lokr_w2"], dev)
    else:
        w2a, w2b = _f32(p["lokr_w2_a"], dev), _f32(p["lokr_w2_b"], dev)
        w2 = _make_weight_cp(_f32(p["lokr_t2"], dev), w2a, w2b) if "lokr_t2" in p else w2a @ w2b
        dim = p["lokr_w2_b"].shape[0]
    # both factors full: dim stays unknown, so calc_scale is 1 and alpha is ignored (as the WebUI)
    output_shape = [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
    if orig.dim() == 4:
        output_shape = list(orig.shape)
    return _Delta(_make_kron(output_shape, w1, w2), output_shape, dim)


def _full(p: dict[str, torch.Tensor], orig: torch.Tensor, dyn_dim: int | None) -> _Delta:
    diff = _f32(p["diff"], orig.device)
    ex_bias = _f32(p["diff_b"], orig.device) if "diff_b" in p else None
    return _Delta(diff, list(diff.shape), None, ex_bias)


def _norm(p: dict[str, torch.Tensor], orig: torch.Tensor, dyn_dim: int | None) -> _Delta:
    w = _f32(p["w_norm"], orig.device)
    return _Delta(w, list(w.shape), None, _f32(p["b_norm"], orig.device))


def _glora(p: dict[str, torch.Tensor], orig: torch.Tensor, dyn_dim: int | None) -> _Delta:
    dev = orig.device
    w1a, w1b = _f32(p["a1.weight"], dev), _f32(p["b1.weight"], dev)
    w2a, w2b = _f32(p["a2.weight"], dev), _f32(p["b2.weight"], dev)
    updown = (w2b @ w1b) + ((orig @ w2a) @ w1a)
    # GLoRA never sets dim in the WebUI, so its alpha is not applied
    return _Delta(updown, [w1a.size(0), w1b.size(1)])


def _oft(p: dict[str, torch.Tensor], orig: torch.Tensor, dyn_dim: int | None) -> _Delta:
    # the WebUI's OFT module sets scale = 1: its alpha constrains the rotation, it never scales ΔW
    return _Delta(oft_updown(p, orig), list(orig.shape), scale=1.0)


_CALC = {"lora": _lora, "loha": _loha, "ia3": _ia3, "lokr": _lokr, "full": _full, "norm": _norm, "glora": _glora,
         "oft": _oft}


def calc_scale(parts: dict[str, torch.Tensor], dim: int | None) -> float:
    """The WebUI's ``calc_scale``: stored ``scale``, else alpha/dim when both known, else 1."""
    if "scale" in parts:
        return float(parts["scale"].item())
    if dim is not None and "alpha" in parts:
        return float(parts["alpha"].item()) / dim
    return 1.0


def apply_weight_decompose(updown: torch.Tensor, orig: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """DoRA: W' = (W+ΔW) · m / ‖W+ΔW‖, returned as W' − W.

    The norm is taken per input channel when ``dora_scale`` is shaped ``[1, in, ...]`` (the
    WebUI's and kohya's layout). LyCORIS ``wd_on_out`` files store ``[out, 1, ...]`` and PEFT
    stores a 1-D ``[out]`` magnitude; for those the norm is per output channel, which is
    what they were trained with (the WebUI would broadcast them into a wrong ``[out, in]``).
    """
    merged = updown + orig
    per_output = dora_scale.dim() == 1 or (
        dora_scale.shape[0] == orig.shape[0] != 1 and dora_scale.shape[1] == 1)
    rest = [1] * (orig.dim() - 1)
    if per_output:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1, keepdim=True).reshape(merged.shape[0], *rest)
        scale = dora_scale.reshape(orig.shape[0], *rest)
    else:
        norm = (merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(merged.shape[1], *rest).transpose(0, 1))
        scale = dora_scale
    return merged * (scale / norm) - orig


def network_delta(parts: dict[str, torch.Tensor], orig_weight: torch.Tensor, multiplier: float,
                  dyn_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ΔW (and a bias delta or None) for one layer, multiplier included, in float32.

    ``orig_weight`` is the layer's current weight as float32 (after networks applied before
    this one, as in the WebUI). Raises ``UnsupportedNetworkType`` / ``RuntimeError`` (shapes).
    """
    kind = network_type(parts)
    if kind not in _CALC:
        raise UnsupportedNetworkType(f"unsupported network type {kind or 'unknown'} (parts: {', '.join(sorted(parts))})")
    delta = _CALC[kind](parts, orig_weight, dyn_dim)
    updown = delta.updown
    bias = parts.get("bias")
    if bias is not None:
        updown = (updown.reshape(bias.shape) + _f32(bias, orig_weight.device)).reshape(delta.output_shape)
    if len(delta.output_shape) == 4:
        updown = updown.reshape(delta.output_shape)
    if orig_weight.numel() == updown.numel():
        updown = updown.reshape(orig_weight.shape)
    ex_bias = delta.ex_bias * multiplier if delta.ex_bias is not None else None
    updown = updown * (delta.scale if delta.scale is not None else calc_scale(parts, delta.dim))
    if "dora_scale" in parts:
        updown = apply_weight_decompose(updown, orig_weight, _f32(parts["dora_scale"], orig_weight.device))
    return updown * multiplier, ex_bias
