"""LDM <-> diffusers key tables: real SD1.5/SDXL names, bijection with the diffusers models, and
agreement with diffusers' own single-file converters and from_single_file."""

from __future__ import annotations

import pytest
import torch

from core.models import architecture as arch
from core.models.checkpoint import empty_text_encoder, empty_unet, empty_vae, load_checkpoint
from core.models.fixtures import full_size_sd15_spec, tiny_spec, write_diffusers_config_dir
from core.models.layout import (
    clip_key_map,
    hf_text_model_prefix,
    ldm_to_diffusers,
    openclip_key_map,
    unet_key_map,
    vae_key_map,
)
from core.models.state_dict_io import read_state_dict

SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn", "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20], "use_linear_projection": True, "transformer_layers_per_block": [1, 2, 10],
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
}


def model_keys(model) -> set[str]:
    return set(model.state_dict())


@pytest.mark.parametrize("config", [full_size_sd15_spec().unet_config, SDXL_UNET], ids=["sd15", "sdxl"])
def test_unet_map_is_a_bijection_onto_the_diffusers_model(config):
    table = unet_key_map(config)
    assert len(set(table.values())) == len(table)
    assert set(table.values()) == model_keys(empty_unet(config))


def test_unet_map_real_sd15_names():
    table = unet_key_map(full_size_sd15_spec().unet_config)
    assert len(table) == 686  # tensors in SD1.5's model.diffusion_model.*
    expected = {
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.4.0.skip_connection.weight": "down_blocks.1.resnets.0.conv_shortcut.weight",
        "input_blocks.11.0.emb_layers.1.bias": "down_blocks.3.resnets.1.time_emb_proj.bias",
        "middle_block.1.proj_in.weight": "mid_block.attentions.0.proj_in.weight",
        "middle_block.2.out_layers.3.weight": "mid_block.resnets.1.conv2.weight",
        "output_blocks.2.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.weight": "up_blocks.1.upsamplers.0.conv.weight",
        "output_blocks.11.1.proj_out.bias": "up_blocks.3.attentions.2.proj_out.bias",
        "output_blocks.11.0.skip_connection.weight": "up_blocks.3.resnets.2.conv_shortcut.weight",
        "time_embed.2.weight": "time_embedding.linear_2.weight",
        "out.2.bias": "conv_out.bias",
    }
    for ldm, dif in expected.items():
        assert table[ldm] == dif


def test_unet_map_real_sdxl_names_for_kohya_lora_lookup():
    table = unet_key_map(SDXL_UNET)
    # kohya: lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k -> this weight
    assert table["input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"] == \
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert table["input_blocks.8.1.transformer_blocks.9.ff.net.2.weight"] == \
        "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.weight"
    assert table["middle_block.1.transformer_blocks.9.attn1.to_out.0.weight"] == \
        "mid_block.attentions.0.transformer_blocks.9.attn1.to_out.0.weight"
    assert table["output_blocks.2.2.conv.weight"] == "up_blocks.0.upsamplers.0.conv.weight"
    assert table["output_blocks.5.2.conv.weight"] == "up_blocks.1.upsamplers.0.conv.weight"
    assert table["output_blocks.8.0.skip_connection.weight"] == "up_blocks.2.resnets.2.conv_shortcut.weight"
    assert table["label_emb.0.0.weight"] == "add_embedding.linear_1.weight"
    assert table["label_emb.0.2.bias"] == "add_embedding.linear_2.bias"


def test_vae_and_text_maps_cover_their_models():
    vae_config = full_size_sd15_spec().vae_config
    table = vae_key_map(vae_config)
    assert set(table.values()) == model_keys(empty_vae(vae_config)) and len(table) == 248
    assert table["decoder.up.0.block.0.nin_shortcut.weight"] == "decoder.up_blocks.3.resnets.0.conv_shortcut.weight"
    assert table["encoder.mid.attn_1.proj_out.weight"] == "encoder.mid_block.attentions.0.to_out.0.weight"
    te = full_size_sd15_spec().text_encoder_configs[0]
    prefix = hf_text_model_prefix("CLIPTextModel")
    assert set(clip_key_map(te, prefix).values()) == model_keys(empty_text_encoder(te))
    big_g = {**te, "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu"}
    flat = {k for v in openclip_key_map(big_g, hf_text_model_prefix("CLIPTextModelWithProjection"), True).values()
            for k in v}
    assert flat == model_keys(empty_text_encoder(big_g))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_matches_diffusers_single_file_converters(fixture_models_dir, family):
    from diffusers.loaders import single_file_utils as sfu

    name = {"sd1": "tiny-sd1", "sd2": "tiny-sd2-v", "sdxl": "tiny-sdxl"}[family]
    sd = read_state_dict(fixture_models_dir / "models" / "Stable-diffusion" / f"{name}.safetensors")
    spec = arch.detect_architecture(sd, {})
    ours = ldm_to_diffusers(sd, spec)

    def same(theirs: dict, mine: dict, *, subset: bool = False):
        if not subset:
            assert set(theirs) == set(mine)
        for k, v in mine.items():
            assert torch.equal(theirs[k], v), k

    same(sfu.convert_ldm_unet_checkpoint(sd, spec.unet_config), ours["unet"])
    same(sfu.convert_ldm_vae_checkpoint(sd, spec.vae_config), ours["vae"])
    clip_prefix = hf_text_model_prefix("CLIPTextModel")
    if family in ("sd1", "sdxl"):
        theirs = {k.replace("text_model.", clip_prefix, 1): v for k, v in sfu.convert_ldm_clip_checkpoint(sd).items()
                  if k.startswith("text_model.") and not k.endswith("position_ids")}
        same(theirs, ours["text_encoder"])
    if family == "sd2":
        # diffusers drops block 23 of the real 24 by name; compare the blocks both keep
        model = empty_text_encoder(spec.text_encoder_configs[0])
        theirs = {k.replace("text_model.", clip_prefix, 1): v for k, v in
                  sfu.convert_open_clip_checkpoint(model, sd, prefix=arch.SD2_OPENCLIP).items()}
        same(theirs, ours["text_encoder"], subset=True)
    if family == "sdxl":
        model = empty_text_encoder(spec.text_encoder_configs[1])
        same(sfu.convert_open_clip_checkpoint(model, sd, prefix=arch.SDXL_CLIP_G), ours["text_encoder_2"])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_kiln_files_load_in_diffusers_from_single_file(fixture_models_dir, tmp_path, family, monkeypatch):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = {"sd1": "tiny-sd1", "sdxl": "tiny-sdxl"}[family]
    path = fixture_models_dir / "models" / "Stable-diffusion" / f"{name}.safetensors"
    model = load_checkpoint(path)
    config_dir = write_diffusers_config_dir(tiny_spec(family), tmp_path / "config")
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None}
    pipe = cls.from_single_file(str(path), config=str(config_dir), local_files_only=True, **extra)
    pairs = [("unet", model.unet), ("vae", model.vae), ("text_encoder", model.text_encoders[0])]
    if family == "sdxl":
        pairs.append(("text_encoder_2", model.text_encoders[1]))
        assert pipe.tokenizer_2.pad_token == "!"
    for component, ours in pairs:
        theirs = getattr(pipe, component).state_dict()
        mine = ours.state_dict()
        assert set(theirs) == set(mine), component
        for k in mine:
            assert torch.equal(theirs[k].float(), mine[k].float()), f"{component}.{k}"
