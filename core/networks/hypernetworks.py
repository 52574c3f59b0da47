"""WebUI hypernetworks: read the ``.pt`` files and apply them inside the U-Net's attention.

A hypernetwork holds, per context width (320/640/768/1024/1280...), two small MLPs: one
transforms the context before ``to_k``, the other before ``to_v``: H(x) = x + MLP(x)·multiplier.
The WebUI applies them in every attention layer whose context width has a pair; the context
of a self-attention layer is its own (normed) hidden states. Several hypernetworks chain.
The MLP layout (A1111 ``modules/hypernetworks/hypernetwork.py``): for each step of
``layer_structure`` a Linear, then the activation (not after the last Linear unless
``activate_output``), a LayerNorm when ``is_layer_norm``, and a Dropout slot where
``dropout_structure`` says so; state-dict indices count every slot.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ModelFileError
from core.hashing import sha256_file
from core.models.folders import walk_files


def _activation_table() -> dict[str, type[nn.Module]]:
    table = {cls.__name__.lower(): cls for _, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
             if cls.__module__ == "torch.nn.modules.activation"}
    # The WebUI's own names; note its "swish" is Hardswish.
    table.update({"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
                  "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid})
    return table


ACTIVATIONS = _activation_table()


def dropout_structure_for(layer_structure: list[float], use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """The WebUI's ``parse_dropout_structure`` for files that predate ``dropout_structure``."""
    if not use_dropout:
        return [0] * len(layer_structure)
    values = [0.0] + [0.3] * (len(layer_structure) - 3)
    values.append(0.3 if last_layer_dropout else 0.0)
    values.append(0.0)
    return values


def build_mlp(dim: int, layer_structure: list[float], activation: str | None, layer_norm: bool,
              activate_output: bool, dropout_structure: list[float] | None) -> nn.Sequential:
    if not layer_structure or layer_structure[0] != 1 or layer_structure[-1] != 1:
        raise ValueError(f"layer_structure must start and end with 1, got {layer_structure}")
    layers: list[nn.Module] = []
    last = len(layer_structure) - 2
    for i in range(len(layer_structure) - 1):
        width_out = int(dim * layer_structure[i + 1])
        layers.append(nn.Linear(int(dim * layer_structure[i]), width_out))
        if activation not in (None, "linear") and (i < last or activate_output):
            if activation not in ACTIVATIONS:
                raise ValueError(f"unsupported activation function: {activation}")
            layers.append(ACTIVATIONS[activation]())
        if layer_norm:
            layers.append(nn.LayerNorm(width_out))
        if dropout_structure is not None and dropout_structure[i + 1] > 0:
            layers.append(nn.Dropout(p=dropout_structure[i + 1]))
    return nn.Sequential(*layers)


def _fix_old_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Very old files name the two layers ``linear1``/``linear2``."""
    renamed = {}
    for key, value in state.items():
        for old, new in (("linear1.", "linear.0."), ("linear2.", "linear.1.")):
            if key.startswith(old):
                key = new + key[len(old):]
        renamed[key] = value
    return renamed


@dataclass
class Hypernetwork:
    name: str
    filename: str
    sha256: str
    layers: dict[int, tuple[nn.Sequential, nn.Sequential]]
    layer_structure: list[float]
    activation_func: str | None
    is_layer_norm: bool
    activate_output: bool
    dropout_structure: list[float]
    step: int = 0
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    optional_info: str | None = None

    @property
    def shorthash(self) -> str:
        """The 10 hex characters written as ``Hypernet hash``."""
        return self.sha256[:10]

    def _mlp(self, width: int, which: int, device: torch.device) -> nn.Sequential | None:
        pair = self.layers.get(width)
        if pair is None:
            return None
        mlp = pair[which]
        if next(mlp.parameters()).device != device:
            mlp.to(device)
        return mlp

    def _forward(self, context: torch.Tensor, multiplier: float, which: int) -> torch.Tensor:
        mlp = self._mlp(context.shape[-1], which, context.device)
        if mlp is None:
            return context
        # computed in float32 and cast back, as the WebUI (cond_cast_float / cond_cast_unet)
        x = context.float()
        return (x + mlp(x) * multiplier).to(context.dtype)

    def forward_k(self, context: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return self._forward(context, multiplier, 0)

    def forward_v(self, context: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return self._forward(context, multiplier, 1)



def load_hypernetwork(path: str | Path) -> Hypernetwork:
    """Read a WebUI hypernetwork ``.pt`` (weights-only). Raises ``ModelFileError``."""
    path = Path(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ModelFileError("hypernetwork file not found", path=path) from e
    except Exception as e:
        raise ModelFileError(f"cannot load as a weights-only torch file ({type(e).__name__}: {e})", path=path,
                             hint="re-download it; pickles that run code are refused") from e
    if not isinstance(state, dict) or not any(isinstance(k, int) for k in state):
        raise ModelFileError("not a hypernetwork (no context-width keys)", path=path)
    layer_structure = list(state.get("layer_structure") or [1, 2, 1])
    activation = state.get("activation_func")
    layer_norm = bool(state.get("is_layer_norm", False))
    dropout = state.get("dropout_structure")
    use_dropout = bool(dropout and any(dropout)) or bool(state.get("use_dropout", False))
    activate_output = bool(state.get("activate_output", True))
    if dropout is None:
        dropout = dropout_structure_for(layer_structure, use_dropout, bool(state.get("last_layer_dropout", False)))
    layers: dict[int, tuple[nn.Sequential, nn.Sequential]] = {}
    try:
        for width, pair in state.items():
            if not isinstance(width, int):
                continue
            mlps = []
            for sd in pair[:2]:
                mlp = build_mlp(width, layer_structure, activation, layer_norm, activate_output, list(dropout))
                fixed = _fix_old_keys(dict(sd))
                mlp.load_state_dict({k.removeprefix("linear."): v for k, v in fixed.items()})
                mlp.eval().requires_grad_(False)
                mlps.append(mlp)
            layers[width] = (mlps[0], mlps[1])
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ModelFileError(f"hypernetwork layers do not match its settings ({e})", path=path) from e
    name = state.get("name")
    return Hypernetwork(
        name=name if isinstance(name, str) and name else path.stem, filename=str(path), sha256=sha256_file(path),
        layers=layers, layer_structure=layer_structure, activation_func=activation, is_layer_norm=layer_norm,
        activate_output=activate_output, dropout_structure=list(dropout), step=int(state.get("step") or 0),
        sd_checkpoint=state.get("sd_checkpoint"), sd_checkpoint_name=state.get("sd_checkpoint_name"),
        optional_info=state.get("optional_info"))


def apply_hypernetworks(hypernetworks: list[tuple[Hypernetwork, float]],
                        context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(context for to_k, context for to_v) after chaining every hypernetwork."""
    context_k = context_v = context
    for hypernetwork, multiplier in hypernetworks:
        context_k = hypernetwork.forward_k(context_k, multiplier)
        context_v = hypernetwork.forward_v(context_v, multiplier)
    return context_k, context_v


class HypernetworkAttnProcessor:
    """diffusers attention (SDPA, like ``AttnProcessor2_0``) with hypernetworks before to_k/to_v."""

    def __init__(self, hypernetworks: list[tuple[Hypernetwork, float]]):
        self.hypernetworks = list(hypernetworks)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        context_k, context_v = apply_hypernetworks(self.hypernetworks, encoder_hidden_states)
        key = attn.to_k(context_k)
        value = attn.to_v(context_v)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                       dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


_ORIGINAL_PROCESSORS = "_kiln_hypernetwork_original_processors"


def install(unet: nn.Module, hypernetworks: list[tuple[Hypernetwork, float]]) -> None:
    """Route every attention layer of ``unet`` through the hypernetworks (replacing any earlier set)."""
    if not hasattr(unet, _ORIGINAL_PROCESSORS):
        setattr(unet, _ORIGINAL_PROCESSORS, dict(unet.attn_processors))
    if not hypernetworks:
        uninstall(unet)
        return
    unet.set_attn_processor(HypernetworkAttnProcessor(hypernetworks))


def uninstall(unet: nn.Module) -> None:
    """Put back the attention processors that were there before ``install``."""
    originals = getattr(unet, _ORIGINAL_PROCESSORS, None)
    if originals is None:
        return
    unet.set_attn_processor(originals)
    delattr(unet, _ORIGINAL_PROCESSORS)


def find_hypernetworks(hypernetwork_dir: str | Path) -> dict[str, Path]:
    """Name (file stem) → path for ``**/*.pt`` under the folder, sorted case-insensitively."""
    found = walk_files(hypernetwork_dir, (".pt",), key=lambda p: str(p).lower())
    return {p.stem: p for p in found if p.stem != "None"}
