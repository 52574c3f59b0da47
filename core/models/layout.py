"""LDM single-file keys <-> diffusers / transformers keys, as data built from the model configs.

One table (a list of ``Rule``) drives both directions, so a load followed by a save writes back
exactly the tensors that were read. Every tensor of the file that no rule claims (EMA weights,
DDPM buffers, CLIP ``position_ids``, SD2's last OpenCLIP block, ``logit_scale``...) is returned as
"passthrough" and written back unchanged on save.

Text encoder convention (documented in ``architecture.ModelSpec`` too): SD2's OpenCLIP ViT-H is
loaded WITHOUT its last transformer block, as diffusers does, so the model's ``last_hidden_state``
(with the final layer norm) is the "penultimate" output A1111 uses for SD2; the dropped block and
the unused ``text_projection`` stay in passthrough. SDXL's two encoders keep every layer (the
pooled output needs the last one; the conditioning uses ``hidden_states[-2]``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# ---------------------------------------------------------------------------------------------
# U-Net
# ---------------------------------------------------------------------------------------------

_RESNET_LDM_TO_DIFFUSERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
}


def _per_block(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type


def _unet_resnet(table: dict[str, str], ldm: str, dif: str, shortcut: bool) -> None:
    for ldm_name, dif_name in _RESNET_LDM_TO_DIFFUSERS.items():
        for p in ("weight", "bias"):
            table[f"{ldm}.{ldm_name}.{p}"] = f"{dif}.{dif_name}.{p}"
    if shortcut:
        for p in ("weight", "bias"):
            table[f"{ldm}.skip_connection.{p}"] = f"{dif}.conv_shortcut.{p}"


def _unet_transformer(table: dict[str, str], ldm: str, dif: str, depth: int) -> None:
    """Transformer2DModel / SpatialTransformer: the same sub-names on both sides."""
    names = ["norm.weight", "norm.bias", "proj_in.weight", "proj_in.bias",
             "proj_out.weight", "proj_out.bias"]
    for d in range(depth):
        b = f"transformer_blocks.{d}"
        for attn in ("attn1", "attn2"):
            names += [f"{b}.{attn}.to_q.weight", f"{b}.{attn}.to_k.weight", f"{b}.{attn}.to_v.weight",
                      f"{b}.{attn}.to_out.0.weight", f"{b}.{attn}.to_out.0.bias"]
        for n in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"):
            names += [f"{b}.{n}.weight", f"{b}.{n}.bias"]
    for n in names:
        table[f"{ldm}.{n}"] = f"{dif}.{n}"


def unet_key_map(unet_config: dict) -> dict[str, str]:
    """LDM U-Net keys (without ``model.diffusion_model.``) -> UNet2DConditionModel keys."""
    channels = list(unet_config["block_out_channels"])
    n = len(channels)
    layers = _per_block(unet_config.get("layers_per_block", 2), n)
    down_types = list(unet_config["down_block_types"])
    up_types = list(unet_config["up_block_types"])
    depth_down = [_per_block(d, layers[i])
                  for i, d in enumerate(_per_block(unet_config.get("transformer_layers_per_block", 1), n))]
    depth_up = unet_config.get("reverse_transformer_layers_per_block") or \
        [depth_down[n - 1 - i][-1] for i in range(n)]
    depth_up = [_per_block(d, layers[n - 1 - i] + 1) for i, d in enumerate(depth_up)]
    table: dict[str, str] = {}

    def pair(ldm: str, dif: str) -> None:
        for p in ("weight", "bias"):
            table[f"{ldm}.{p}"] = f"{dif}.{p}"

    pair("time_embed.0", "time_embedding.linear_1")
    pair("time_embed.2", "time_embedding.linear_2")
    if unet_config.get("addition_embed_type") == "text_time":
        pair("label_emb.0.0", "add_embedding.linear_1")
        pair("label_emb.0.2", "add_embedding.linear_2")
    elif unet_config.get("class_embed_type") == "projection":
        pair("label_emb.0.0", "class_embedding.linear_1")
        pair("label_emb.0.2", "class_embedding.linear_2")
    pair("input_blocks.0.0", "conv_in")

    k = 1
    in_ch = channels[0]
    for i in range(n):
        for j in range(layers[i]):
            _unet_resnet(table, f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", in_ch != channels[i])
            in_ch = channels[i]
            if _has_attention(down_types[i]):
                _unet_transformer(table, f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}",
                                  depth_down[i][j])
            k += 1
        if i < n - 1:
            pair(f"input_blocks.{k}.0.op", f"down_blocks.{i}.downsamplers.0.conv")
            k += 1

    mid_type = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    _unet_resnet(table, "middle_block.0", "mid_block.resnets.0", False)
    if mid_type == "UNetMidBlock2DCrossAttn":
        _unet_transformer(table, "middle_block.1", "mid_block.attentions.0", depth_down[-1][-1])
        _unet_resnet(table, "middle_block.2", "mid_block.resnets.1", False)
    else:  # a mid block without attention keeps two resnets back to back
        _unet_resnet(table, "middle_block.1", "mid_block.resnets.1", False)

    k = 0
    for i in range(n):
        attn = _has_attention(up_types[i])
        for j in range(layers[n - 1 - i] + 1):
            _unet_resnet(table, f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", True)
            if attn:
                _unet_transformer(table, f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}",
                                  depth_up[i][j])
            if i < n - 1 and j == layers[n - 1 - i]:
                pair(f"output_blocks.{k}.{2 if attn else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv")
            k += 1

    pair("out.0", "conv_norm_out")
    pair("out.2", "conv_out")
    return table


# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------

_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# Names some converted VAE files use for the same mid-block attention (old diffusers naming).
VAE_ATTENTION_ALIASES = {"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def _vae_resnet(table: dict[str, str], ldm: str, dif: str, shortcut: bool) -> None:
    for n in ("norm1", "conv1", "norm2", "conv2"):
        for p in ("weight", "bias"):
            table[f"{ldm}.{n}.{p}"] = f"{dif}.{n}.{p}"
    if shortcut:
        for p in ("weight", "bias"):
            table[f"{ldm}.nin_shortcut.{p}"] = f"{dif}.conv_shortcut.{p}"


def _vae_mid(table: dict[str, str], side: str) -> None:
    _vae_resnet(table, f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", False)
    _vae_resnet(table, f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", False)
    for ldm_name, dif_name in _VAE_ATTENTION.items():
        for p in ("weight", "bias"):
            table[f"{side}.mid.attn_1.{ldm_name}.{p}"] = f"{side}.mid_block.attentions.0.{dif_name}.{p}"


def vae_key_map(vae_config: dict) -> dict[str, str]:
    """LDM VAE keys (without ``first_stage_model.``) -> AutoencoderKL keys."""
    channels = list(vae_config["block_out_channels"])
    n = len(channels)
    layers = int(vae_config.get("layers_per_block", 2))
    table: dict[str, str] = {}

    def pair(ldm: str, dif: str) -> None:
        for p in ("weight", "bias"):
            table[f"{ldm}.{p}"] = f"{dif}.{p}"

    pair("encoder.conv_in", "encoder.conv_in")
    in_ch = channels[0]
    for i in range(n):
        for j in range(layers):
            _vae_resnet(table, f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}",
                        in_ch != channels[i])
            in_ch = channels[i]
        if i < n - 1:
            pair(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    _vae_mid(table, "encoder")
    pair("encoder.norm_out", "encoder.conv_norm_out")
    pair("encoder.conv_out", "encoder.conv_out")

    pair("decoder.conv_in", "decoder.conv_in")
    _vae_mid(table, "decoder")
    rev = channels[::-1]
    in_ch = rev[0]
    for i in range(n):
        level = n - 1 - i
        for j in range(layers + 1):
            _vae_resnet(table, f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}",
                        in_ch != rev[i])
            in_ch = rev[i]
        if i < n - 1:
            pair(f"decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv")
    pair("decoder.norm_out", "decoder.conv_norm_out")
    pair("decoder.conv_out", "decoder.conv_out")
    pair("quant_conv", "quant_conv")
    pair("post_quant_conv", "post_quant_conv")
    return table


def is_vae_attention_linear(diffusers_key: str) -> bool:
    """Mid-block q/k/v/out weights: 1x1 convs [C,C,1,1] in LDM, Linear [C,C] in diffusers."""
    return ".mid_block.attentions.0.to_" in diffusers_key and diffusers_key.endswith(".weight")


def normalize_vae_ldm_key(key: str) -> str:
    """Map the old ``query/key/value/proj_attn`` mid-attention names onto ``q/k/v/proj_out``."""
    marker = ".mid.attn_1."
    if marker not in key:
        return key
    head, tail = key.split(marker, 1)
    name, _, param = tail.partition(".")
    return f"{head}{marker}{VAE_ATTENTION_ALIASES.get(name, name)}.{param}"


# ---------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------

_CLIP_LAYER_PARAMS = [f"self_attn.{p}_proj" for p in ("q", "k", "v", "out")] + [
    "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2"]


@lru_cache(maxsize=4)
def hf_text_model_prefix(architecture: str) -> str:
    """``"text_model."`` when the installed transformers class nests its keys under it, else ``""``.

    transformers 5 dropped the level for ``CLIPTextModel`` (not for ``...WithProjection``); build a
    one-layer model on the meta device to find out instead of guessing from version numbers.
    """
    import transformers

    cls = getattr(transformers, architecture)
    config = transformers.CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                         num_attention_heads=1, vocab_size=8, max_position_embeddings=4,
                                         projection_dim=8, bos_token_id=None, eos_token_id=None,
                                         pad_token_id=None)
    with torch.device("meta"):
        keys = cls(config).state_dict().keys()
    return "text_model." if any(k.startswith("text_model.") for k in keys) else ""


def clip_key_map(te_config: dict, hf_prefix: str) -> dict[str, str]:
    """HF CLIP names as stored in files (4.x, after the ``text_model.`` level) -> installed model keys."""
    table: dict[str, str] = {}
    names = ["embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
             "final_layer_norm.weight", "final_layer_norm.bias"]
    for n in range(int(te_config["num_hidden_layers"])):
        for p in _CLIP_LAYER_PARAMS:
            names += [f"encoder.layers.{n}.{p}.weight", f"encoder.layers.{n}.{p}.bias"]
    for name in names:
        table[name] = hf_prefix + name
    return table


_OPENCLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def openclip_key_map(te_config: dict, hf_prefix: str, with_projection: bool) -> dict[str, tuple[str, ...]]:
    """OpenCLIP keys (after ``...model.``) -> installed HF keys; in_proj maps to (q, k, v)."""
    table: dict[str, tuple[str, ...]] = {
        "token_embedding.weight": (hf_prefix + "embeddings.token_embedding.weight",),
        "positional_embedding": (hf_prefix + "embeddings.position_embedding.weight",),
        "ln_final.weight": (hf_prefix + "final_layer_norm.weight",),
        "ln_final.bias": (hf_prefix + "final_layer_norm.bias",),
    }
    for n in range(int(te_config["num_hidden_layers"])):
        src, dst = f"transformer.resblocks.{n}", f"{hf_prefix}encoder.layers.{n}"
        for o, h in _OPENCLIP_LAYER.items():
            for p in ("weight", "bias"):
                table[f"{src}.{o}.{p}"] = (f"{dst}.{h}.{p}",)
        for p in ("weight", "bias"):
            table[f"{src}.attn.in_proj_{p}"] = tuple(f"{dst}.self_attn.{q}_proj.{p}" for q in "qkv")
    if with_projection:
        table["text_projection"] = ("text_projection.weight",)
    return table


# ---------------------------------------------------------------------------------------------
# The whole checkpoint
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One file tensor <-> one or more model tensors (three for a fused OpenCLIP q/k/v)."""

    ldm_key: str
    component: str
    keys: tuple[str, ...]
    op: str = "copy"  # copy | conv1x1 (VAE attention) | split_qkv | transpose (text_projection)


def text_encoder_components(spec) -> list[str]:
    return ["text_encoder", "text_encoder_2"][: len(spec.text_encoder_configs)]


def checkpoint_rules(spec) -> list[Rule]:
    """Every rule for a checkpoint of ``spec`` (an ``architecture.ModelSpec``)."""
    rules = [Rule(UNET_PREFIX + k, "unet", (v,)) for k, v in unet_key_map(spec.unet_config).items()]
    rules += vae_rules(spec.vae_config, VAE_PREFIX)
    for component, te_config, prefix, fmt in zip(text_encoder_components(spec), spec.text_encoder_configs,
                                                spec.text_encoder_prefixes, spec.text_encoder_formats):
        rules += text_encoder_rules(te_config, prefix, fmt, component)
    return rules


def vae_rules(vae_config: dict, prefix: str, component: str = "vae") -> list[Rule]:
    return [Rule(prefix + k, component, (v,), "conv1x1" if is_vae_attention_linear(v) else "copy")
            for k, v in vae_key_map(vae_config).items()]


def text_encoder_rules(te_config: dict, prefix: str, fmt: str, component: str) -> list[Rule]:
    architecture = (te_config.get("architectures") or ["CLIPTextModel"])[0]
    hf_prefix = hf_text_model_prefix(architecture)
    if fmt == "hf":
        return [Rule(prefix + k, component, (v,)) for k, v in clip_key_map(te_config, hf_prefix).items()]
    with_projection = architecture == "CLIPTextModelWithProjection"
    rules = []
    for k, v in openclip_key_map(te_config, hf_prefix, with_projection).items():
        op = "split_qkv" if len(v) == 3 else "transpose" if k == "text_projection" else "copy"
        rules.append(Rule(prefix + k, component, v, op))
    return rules


def _to_model(rule: Rule, tensor: torch.Tensor) -> list[torch.Tensor]:
    if rule.op == "copy":
        return [tensor]
    if rule.op == "conv1x1":
        return [tensor.reshape(tensor.shape[0], tensor.shape[1]) if tensor.ndim == 4 else tensor]
    if rule.op == "split_qkv":
        return list(tensor.chunk(3, dim=0))
    if rule.op == "transpose":
        return [tensor.t().contiguous()]
    raise ValueError(f"unknown layout op {rule.op!r}")


def _to_file(rule: Rule, tensors: list[torch.Tensor]) -> torch.Tensor:
    if rule.op == "copy":
        return tensors[0]
    if rule.op == "conv1x1":
        t = tensors[0]
        return t.reshape(t.shape[0], t.shape[1], 1, 1) if t.ndim == 2 else t
    if rule.op == "split_qkv":
        return torch.cat(tensors, dim=0)
    if rule.op == "transpose":
        return tensors[0].t().contiguous()
    raise ValueError(f"unknown layout op {rule.op!r}")


def apply_rules_to_model(state_dict: dict[str, torch.Tensor], rules: Iterable[Rule],
                         components: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
    """File tensors -> {component: {model key: tensor}} plus "passthrough" for unclaimed keys."""
    out: dict[str, dict[str, torch.Tensor]] = {c: {} for c in components}
    claimed: set[str] = set()
    for rule in rules:
        t = state_dict.get(rule.ldm_key)
        if t is None:
            continue
        claimed.add(rule.ldm_key)
        for key, value in zip(rule.keys, _to_model(rule, t)):
            out.setdefault(rule.component, {})[key] = value
    out["passthrough"] = {k: v for k, v in state_dict.items() if k not in claimed}
    return out


def apply_rules_to_file(components: dict[str, dict[str, torch.Tensor]],
                        rules: Iterable[Rule]) -> dict[str, torch.Tensor]:
    """{component: {model key: tensor}} -> file tensors (rules whose model keys are absent are skipped)."""
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        comp = components.get(rule.component)
        if comp is None or any(k not in comp for k in rule.keys):
            continue
        out[rule.ldm_key] = _to_file(rule, [comp[k] for k in rule.keys])
    return out


def ldm_to_diffusers(state_dict: dict[str, torch.Tensor], spec) -> dict[str, dict[str, torch.Tensor]]:
    """Single-file checkpoint tensors -> "unet", "vae", "text_encoder"[, "text_encoder_2"], "passthrough".

    VAE keys in the old ``query/key/value/proj_attn`` naming are read as ``q/k/v/proj_out``.
    """
    renamed = {normalize_vae_ldm_key(k) if k.startswith(VAE_PREFIX) else k: v for k, v in state_dict.items()}
    components = ["unet", "vae", *text_encoder_components(spec)]
    return apply_rules_to_model(renamed, checkpoint_rules(spec), components)


def diffusers_to_ldm(components: dict[str, dict[str, torch.Tensor]], spec) -> dict[str, torch.Tensor]:
    """The inverse of ``ldm_to_diffusers``: passthrough tensors are written back as they are."""
    out = apply_rules_to_file(components, checkpoint_rules(spec))
    for k, v in (components.get("passthrough") or {}).items():
        out.setdefault(k, v)
    return out
