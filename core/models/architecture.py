"""What a single-file checkpoint is (SD1 / SD2 / SDXL) and its model configs, read from keys and shapes.

Nothing here is fetched: every diffusers / transformers config is derived from tensor shapes, so a
tiny model saved in the real layout loads through the same code as a full-size one. What shapes
cannot tell (attention head counts, the VAE scaling factor, the native resolution, prediction type)
follows the family's convention, and safetensors metadata ``kiln.*`` keys can override it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import ModelFileError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer.text_model."
SD1_CLIP_OLD = "cond_stage_model.transformer."  # very old SD1 files: no ``text_model.`` level
SD2_OPENCLIP = "cond_stage_model.model."
SDXL_CLIP_L = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G = "conditioner.embedders.1.model."
SDXL_REFINER_CLIP_G = "conditioner.embedders.0.model."

V_PRED_MARKER = "v_pred"  # ComfyUI / Forge: an empty tensor saying "this model predicts v"
ZTSNR_MARKER = "ztsnr"  # ... and "this model was trained with zero terminal SNR"
MARKER_KEYS = (V_PRED_MARKER, ZTSNR_MARKER)

META_UNET_HEADS = "kiln.unet.num_attention_heads"
META_TEXT_HEADS = "kiln.text_encoder.num_attention_heads"
META_VAE_SCALING = "kiln.vae.scaling_factor"
# GroupNorm groups of the U-Net: not visible in tensor shapes, 32 in every SD release.
META_UNET_NORM_GROUPS = "kiln.unet.norm_num_groups"
META_NATIVE_SIZE = "kiln.native_size"
META_PREDICTION = "kiln.prediction_type"

PAD_CLIP_L = "<|endoftext|>"
PAD_OPEN_CLIP = "!"

FAMILY_VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class ModelSpec:
    """Everything needed to build the diffusers / transformers models of one checkpoint.

    Text encoders (``text_encoder_configs`` are ``transformers.CLIPTextConfig`` kwargs whose
    ``architectures`` names the class):
    - sd1: one CLIP ViT-L ``CLIPTextModel`` with every layer. A1111's default conditioning is its
      ``last_hidden_state``; clip skip N uses ``hidden_states[-N]`` + ``final_layer_norm``.
    - sd2: OpenCLIP ViT-H as a ``CLIPTextModel`` WITHOUT the file's last block (kept in passthrough,
      as diffusers does), so ``last_hidden_state`` is A1111's "penultimate" SD2 conditioning.
    - sdxl: CLIP ViT-L ``CLIPTextModel`` and OpenCLIP bigG ``CLIPTextModelWithProjection``, all
      layers; the conditioning is ``hidden_states[-2]`` of each, the pooled vector is
      ``text_embeds`` of the second.
    """

    family: str
    prediction_type: str
    zero_terminal_snr: bool
    native_size: int
    unet_config: dict
    vae_config: dict
    text_encoder_configs: list[dict]
    clip_pad_token: str
    vae_scaling_factor: float
    clip_pad_tokens: list[str] = field(default_factory=list)
    # Where each text encoder lives in the file, and in which naming ("hf" or "openclip").
    text_encoder_prefixes: list[str] = field(default_factory=list)
    text_encoder_formats: list[str] = field(default_factory=list)
    # Where prediction_type came from: "user", "marker", "metadata", "unet-test", "default".
    prediction_source: str = "default"
    # Only SD2 without a marker needs the A1111 U-Net test; the loader runs it after building the U-Net.
    needs_prediction_test: bool = False
    # True when metadata fixed native_size; otherwise SD2's follows its prediction type.
    native_size_fixed: bool = False

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def is_v_prediction(self) -> bool:
        return self.prediction_type == "v_prediction"


# ---------------------------------------------------------------------------------------------
# What is it?
# ---------------------------------------------------------------------------------------------


def _fail(problem: str, hint: str | None, path) -> ModelFileError:
    return ModelFileError(problem, path=path, hint=hint)


def describe_non_checkpoint(keys: list[str]) -> tuple[str, str] | None:
    """(what this looks like, where it belongs) for state dicts that are not SD checkpoints."""
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "oft_unet_")) for k in keys):
        return "this is a LoRA (lora_unet_* keys)", "put it in models/Lora"
    if any(re.search(r"\.(lora_down|lora_up|lora_A|lora_B|hada_w1_a|lokr_w1|oft_blocks|oft_diag)\b", k) for k in keys):
        return "this is a LoRA/LyCORIS network (lora_down/lora_up-style keys)", "put it in models/Lora"
    if any(k.startswith(("string_to_param", "emb_params")) for k in keys) or \
            (keys and set(keys) <= {"clip_l", "clip_g"}):
        return "this is a textual inversion embedding", "put it in embeddings/"
    if keys and all(re.match(r"^\d+\.", k) for k in keys):
        return "this is a hypernetwork", "put it in models/hypernetworks"
    if any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys) \
            and not any(k.startswith(UNET) for k in keys):
        return "this is a VAE (encoder.*/decoder.* keys)", "put it in models/VAE"
    if any(k.startswith(("down_blocks.", "mid_block.", "conv_in.")) for k in keys):
        return "this is a diffusers-format U-Net, not a single-file checkpoint", \
            "use the single-file .safetensors of the model"
    if any(".x_embedder." in k or "joint_blocks." in k for k in keys):
        return "this is a Stable Diffusion 3 model, which Kiln does not run", "use an SD1, SD2 or SDXL checkpoint"
    if any("double_blocks." in k for k in keys):
        return "this is a Flux-type model, which Kiln does not run", "use an SD1, SD2 or SDXL checkpoint"
    return None


def detect_family(state_dict: dict[str, torch.Tensor], path=None) -> str:
    keys = list(state_dict)
    has_unet = f"{UNET}input_blocks.0.0.weight" in state_dict
    if has_unet and f"{SDXL_CLIP_G}ln_final.weight" in state_dict:
        return "sdxl"
    if has_unet and f"{SDXL_REFINER_CLIP_G}ln_final.weight" in state_dict:
        raise _fail("this is an SDXL refiner checkpoint, which Kiln does not load yet", "use an SDXL base model", path)
    if has_unet and f"{SD2_OPENCLIP}transformer.resblocks.0.attn.in_proj_weight" in state_dict:
        return "sd2"
    if has_unet and (f"{SD1_CLIP}embeddings.token_embedding.weight" in state_dict
                     or f"{SD1_CLIP_OLD}embeddings.token_embedding.weight" in state_dict):
        return "sd1"
    what = describe_non_checkpoint(keys)
    if what:
        raise _fail(what[0], what[1], path)
    if has_unet:
        raise _fail("the checkpoint has a U-Net but no text encoder Kiln recognises",
                    "it may be a U-Net-only file; use a full SD1/SD2/SDXL checkpoint", path)
    raise _fail(f"not a Stable Diffusion checkpoint (first keys: {', '.join(sorted(keys)[:5])})",
                "put only SD1/SD2/SDXL single-file checkpoints in models/Stable-diffusion", path)


# ---------------------------------------------------------------------------------------------
# Shapes -> configs
# ---------------------------------------------------------------------------------------------


def _indices(keys, prefix: str) -> list[int]:
    """Sorted distinct integers N of keys ``prefix N.``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def _parse_heads(value: str, n: int, what: str, path) -> list[int]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise _fail(f"metadata {what} is not an int or a JSON list: {value!r}", None, path) from exc
    heads = [parsed] * n if isinstance(parsed, int) else list(parsed)
    if len(heads) != n or not all(isinstance(h, int) and h > 0 for h in heads):
        raise _fail(f"metadata {what} must be a positive int or a list of {n}: {value!r}", None, path)
    return heads


def _parse_norm_groups(value: str, channels: list[int], path) -> int:
    try:
        groups = int(value)
    except ValueError:
        raise _fail(f"metadata {META_UNET_NORM_GROUPS} is not a whole number: {value!r}", None, path) from None
    if groups <= 0 or any(c % groups for c in channels):
        raise _fail(f"metadata {META_UNET_NORM_GROUPS} = {groups} does not divide the U-Net's channels {channels}",
                    None, path)
    return groups


def unet_config_from_shapes(sd: dict[str, torch.Tensor], family: str, metadata: dict[str, str],
                            pooled_dim: int | None, native_size: int, path=None) -> dict:
    keys = [k[len(UNET):] for k in sd if k.startswith(UNET)]
    s = {k: sd[UNET + k] for k in keys}
    conv_in = s["input_blocks.0.0.weight"]
    in_channels, model_channels = int(conv_in.shape[1]), int(conv_in.shape[0])

    def transformer_at(block: str) -> tuple[bool, int, int | None, bool]:
        """(has attention, depth, cross-attention dim, linear proj_in) of ``block`` (e.g. input_blocks.1.1)."""
        if f"{block}.proj_in.weight" not in s:
            return False, 0, None, False
        depth = len(_indices(keys, f"{block}.transformer_blocks."))
        cross = int(s[f"{block}.transformer_blocks.0.attn2.to_k.weight"].shape[1])
        return True, depth, cross, s[f"{block}.proj_in.weight"].ndim == 2

    levels: list[list[tuple[int, bool, int]]] = [[]]
    cross_dims, linear = set(), set()
    for k in _indices(keys, "input_blocks.")[1:]:
        if f"input_blocks.{k}.0.op.weight" in s:
            levels.append([])
            continue
        out_ch = int(s[f"input_blocks.{k}.0.out_layers.3.weight"].shape[0])
        attn, depth, cross, lin = transformer_at(f"input_blocks.{k}.1")
        if attn:
            cross_dims.add(cross)
            linear.add(lin)
        levels[-1].append((out_ch, attn, depth))
    n = len(levels)
    if any(not lv for lv in levels):
        raise _fail("the U-Net's input blocks do not follow the SD layout", None, path)
    block_out = [lv[0][0] for lv in levels]
    layers = [len(lv) for lv in levels]
    down_attn = [any(a for _, a, _ in lv) for lv in levels]

    mid_attn, mid_depth, mid_cross, mid_lin = transformer_at("middle_block.1")
    if not mid_attn:
        raise _fail("the U-Net's middle block has no attention; not an SD1/SD2/SDXL U-Net", None, path)
    cross_dims.add(mid_cross)
    linear.add(mid_lin)
    depth_down = [max((d for _, a, d in lv if a), default=1) for lv in levels]
    depth_down[-1] = depth_down[-1] if down_attn[-1] else mid_depth

    up_attn, depth_up = [], []
    k = 0
    for i in range(n):
        depths = []
        for _ in range(layers[n - 1 - i] + 1):
            attn, depth, cross, lin = transformer_at(f"output_blocks.{k}.1")
            if attn:
                cross_dims.add(cross)
                linear.add(lin)
            depths.append(depth)
            k += 1
        up_attn.append(any(depths))
        depth_up.append(max(depths) if any(depths) else 1)
    if len(cross_dims) != 1 or len(linear) != 1:
        raise _fail("the U-Net's attention blocks disagree on their sizes", None, path)

    if META_UNET_HEADS in metadata:
        heads = _parse_heads(metadata[META_UNET_HEADS], n, META_UNET_HEADS, path)
    elif family == "sd1":
        heads = [8] * n
    else:
        heads = [max(1, c // 64) for c in block_out]

    config: dict = {
        "sample_size": native_size // 8,
        "in_channels": in_channels,
        "out_channels": int(s["out.2.weight"].shape[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        "block_out_channels": block_out,
        "layers_per_block": layers[0] if len(set(layers)) == 1 else layers,
        "cross_attention_dim": cross_dims.pop(),
        # diffusers' UNet2DConditionModel takes the head COUNT under this (misnamed) key.
        "attention_head_dim": heads[0] if len(set(heads)) == 1 and family == "sd1" else heads,
        "use_linear_projection": linear.pop(),
        "transformer_layers_per_block": depth_down[0] if len(set(depth_down)) == 1 else depth_down,
    }
    if META_UNET_NORM_GROUPS in metadata:
        config["norm_num_groups"] = _parse_norm_groups(metadata[META_UNET_NORM_GROUPS], block_out, path)
    if depth_up != [depth_down[n - 1 - i] for i in range(n)]:
        config["reverse_transformer_layers_per_block"] = depth_up
    time_dim = int(s["time_embed.0.weight"].shape[0])
    if time_dim != 4 * model_channels:
        config["time_embedding_dim"] = time_dim
    if "label_emb.0.0.weight" in s:
        if family != "sdxl" or pooled_dim is None:
            raise _fail("the U-Net has a class embedding (unCLIP-style), which Kiln does not run", None, path)
        adm = int(s["label_emb.0.0.weight"].shape[1])
        if (adm - pooled_dim) % 6 or adm <= pooled_dim:
            raise _fail(f"SDXL label embedding input {adm} does not fit a pooled size of {pooled_dim}", None, path)
        config.update(addition_embed_type="text_time", addition_time_embed_dim=(adm - pooled_dim) // 6,
                      projection_class_embeddings_input_dim=adm)
    elif family == "sdxl":
        raise _fail("SDXL U-Net without label_emb (size conditioning)", None, path)
    return config


def vae_config_from_shapes(sd: dict[str, torch.Tensor], prefix: str, scaling_factor: float,
                           native_size: int, path=None) -> dict:
    keys = [k[len(prefix):] for k in sd if k.startswith(prefix)]
    s = {k: sd[prefix + k] for k in keys}
    if "encoder.conv_in.weight" not in s or "decoder.conv_out.weight" not in s:
        raise _fail("the VAE (first_stage_model.*) is missing or incomplete", "use a full checkpoint", path)
    levels = _indices(keys, "encoder.down.")
    n = len(levels)
    return {
        "in_channels": int(s["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(s["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [int(s[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(n)],
        "layers_per_block": len(_indices(keys, "encoder.down.0.block.")),
        "latent_channels": int(s["decoder.conv_in.weight"].shape[1]),
        "sample_size": native_size,
        "scaling_factor": scaling_factor,
    }


def _text_heads(metadata: dict[str, str], index: int, count: int, hidden: int, path) -> int:
    if META_TEXT_HEADS in metadata:
        return _parse_heads(metadata[META_TEXT_HEADS], count, META_TEXT_HEADS, path)[index]
    return max(1, hidden // 64)


def hf_clip_config_from_shapes(sd, prefix: str, heads: int | None = None) -> dict:
    keys = [k[len(prefix):] for k in sd if k.startswith(prefix)]
    tok = sd[prefix + "embeddings.token_embedding.weight"]
    hidden = int(tok.shape[1])
    return {
        "architectures": ["CLIPTextModel"],
        "vocab_size": int(tok.shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(sd[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": len(_indices(keys, "encoder.layers.")),
        "num_attention_heads": heads or max(1, hidden // 64),
        "max_position_embeddings": int(sd[prefix + "embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }


def openclip_config_from_shapes(sd, prefix: str, *, drop_last_layer: bool, with_projection: bool,
                                heads: int | None = None) -> dict:
    keys = [k[len(prefix):] for k in sd if k.startswith(prefix)]
    tok = sd[prefix + "token_embedding.weight"]
    hidden = int(tok.shape[1])
    layers = len(_indices(keys, "transformer.resblocks."))
    proj = sd.get(prefix + "text_projection")
    return {
        "architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
        "vocab_size": int(tok.shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(sd[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "num_hidden_layers": layers - 1 if drop_last_layer else layers,
        "num_attention_heads": heads or max(1, hidden // 64),
        "max_position_embeddings": int(sd[prefix + "positional_embedding"].shape[0]),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": int(proj.shape[1]) if proj is not None else hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }


# ---------------------------------------------------------------------------------------------
# Prediction type
# ---------------------------------------------------------------------------------------------


def prediction_from_file(sd: dict, metadata: dict[str, str], path=None) -> tuple[str | None, bool, str]:
    """(prediction type or None if the file does not say, zero-terminal-SNR, source)."""
    ztsnr = ZTSNR_MARKER in sd
    if V_PRED_MARKER in sd:
        return "v_prediction", ztsnr, "marker"
    if META_PREDICTION in metadata:
        value = metadata[META_PREDICTION]
        if value not in PREDICTION_TYPES:
            raise _fail(f"metadata {META_PREDICTION}={value!r} is not one of {PREDICTION_TYPES}", None, path)
        return value, ztsnr, "metadata"
    modelspec = metadata.get("modelspec.prediction_type", "").strip().lower()
    if modelspec in ("v", "v_prediction", "v-prediction"):
        return "v_prediction", ztsnr, "metadata"
    if modelspec in ("epsilon", "eps"):
        return "epsilon", ztsnr, "metadata"
    return None, ztsnr, "default"


@torch.no_grad()
def unet_predicts_v(unet) -> bool:
    """A1111's SD2 test: constant input 0.5 at t=999 with constant context 0.5; mean(out - x) < -1 => v.

    An epsilon model predicts noise (output near 0, so out - x is near -0.5); a v model predicts
    roughly -x at the last timestep.
    """
    param = next(unet.parameters())
    cfg = unet.config
    x = torch.full((1, cfg.in_channels, 8, 8), 0.5, device=param.device, dtype=param.dtype)
    cond = torch.full((1, 2, cfg.cross_attention_dim), 0.5, device=param.device, dtype=param.dtype)
    t = torch.tensor([999], device=param.device)
    out = unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]
    return (out.float() - x.float()).mean().item() < -1


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _native_size(family: str, prediction: str | None, metadata: dict[str, str], path) -> int:
    if META_NATIVE_SIZE in metadata:
        try:
            return int(metadata[META_NATIVE_SIZE])
        except ValueError as exc:
            raise _fail(f"metadata {META_NATIVE_SIZE} is not an integer", None, path) from exc
    res = re.match(r"^\s*(\d+)\s*x\s*(\d+)\s*$", metadata.get("modelspec.resolution", ""))
    if res:
        return int(res.group(1))
    return default_native_size(family, prediction or "epsilon")


def detect_architecture(state_dict: dict[str, torch.Tensor], metadata: dict | None = None, *,
                        path: str | Path | None = None) -> ModelSpec:
    """The ModelSpec of a single-file SD1/SD2/SDXL checkpoint, or ModelFileError saying what it is."""
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    family = detect_family(state_dict, path)
    prediction, ztsnr, source = prediction_from_file(state_dict, metadata, path)
    needs_test = prediction is None and family == "sd2"
    if family == "sdxl":
        heads = [_text_heads(metadata, i, 2, int(state_dict[t].shape[1]), path) for i, t in enumerate(
            [f"{SDXL_CLIP_L}embeddings.token_embedding.weight", f"{SDXL_CLIP_G}token_embedding.weight"])]
        te = [hf_clip_config_from_shapes(state_dict, SDXL_CLIP_L, heads[0]),
              openclip_config_from_shapes(state_dict, SDXL_CLIP_G, drop_last_layer=False,
                                          with_projection=True, heads=heads[1])]
        prefixes, formats = [SDXL_CLIP_L, SDXL_CLIP_G], ["hf", "openclip"]
        pads = [PAD_CLIP_L, PAD_OPEN_CLIP]
        if f"{SDXL_CLIP_G}text_projection" not in state_dict:
            raise _fail("SDXL checkpoint without the OpenCLIP text_projection", None, path)
        pooled = te[1]["projection_dim"]
    elif family == "sd2":
        hidden = int(state_dict[f"{SD2_OPENCLIP}token_embedding.weight"].shape[1])
        te = [openclip_config_from_shapes(state_dict, SD2_OPENCLIP, drop_last_layer=True, with_projection=False,
                                          heads=_text_heads(metadata, 0, 1, hidden, path))]
        prefixes, formats, pads, pooled = [SD2_OPENCLIP], ["openclip"], [PAD_OPEN_CLIP], None
    else:
        prefix = SD1_CLIP if f"{SD1_CLIP}embeddings.token_embedding.weight" in state_dict else SD1_CLIP_OLD
        hidden = int(state_dict[f"{prefix}embeddings.token_embedding.weight"].shape[1])
        te = [hf_clip_config_from_shapes(state_dict, prefix, _text_heads(metadata, 0, 1, hidden, path))]
        prefixes, formats, pads, pooled = [prefix], ["hf"], [PAD_CLIP_L], None

    scaling = FAMILY_VAE_SCALING[family]
    if META_VAE_SCALING in metadata:
        try:
            scaling = float(metadata[META_VAE_SCALING])
        except ValueError as exc:
            raise _fail(f"metadata {META_VAE_SCALING} is not a number", None, path) from exc
    native = _native_size(family, prediction, metadata, path)
    unet_config = unet_config_from_shapes(state_dict, family, metadata, pooled, native, path)
    return ModelSpec(
        family=family,
        prediction_type=prediction or "epsilon",
        zero_terminal_snr=ztsnr,
        native_size=native,
        unet_config=unet_config,
        vae_config=vae_config_from_shapes(state_dict, VAE, scaling, native, path),
        text_encoder_configs=te,
        clip_pad_token=pads[0],
        vae_scaling_factor=scaling,
        clip_pad_tokens=pads,
        text_encoder_prefixes=prefixes,
        text_encoder_formats=formats,
        prediction_source=source,
        needs_prediction_test=needs_test,
        native_size_fixed=META_NATIVE_SIZE in metadata or "modelspec.resolution" in metadata,
    )


def resolve_prediction(spec: ModelSpec, unet, user_choice: str | None) -> None:
    """Settle ``spec.prediction_type``: the user's choice wins, then the file, then A1111's SD2 test.

    SD2's native size follows: 768 for v-prediction, 512 for epsilon (unless metadata fixed it).
    """
    if user_choice is not None:
        if user_choice not in PREDICTION_TYPES:
            raise ModelFileError(f"prediction type {user_choice!r} is not one of {PREDICTION_TYPES}")
        spec.prediction_type, spec.prediction_source = user_choice, "user"
    elif spec.needs_prediction_test:
        spec.prediction_type = "v_prediction" if unet_predicts_v(unet) else "epsilon"
        spec.prediction_source = "unet-test"
    spec.needs_prediction_test = False
    if spec.family == "sd2" and not spec.native_size_fixed:
        spec.native_size = default_native_size(spec.family, spec.prediction_type)


def default_native_size(family: str, prediction_type: str) -> int:
    if family == "sdxl":
        return 1024
    return 768 if family == "sd2" and prediction_type == "v_prediction" else 512
