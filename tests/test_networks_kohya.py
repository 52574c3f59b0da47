"""core.networks.kohya against the kohya facts in FORMATS.md §1 and §3."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from core.hashing import addnet_hash_safetensors, model_hash_old, model_hash_old_bytes
from core.networks import kohya


@pytest.fixture(scope="module")
def sd15():
    """SD1.5's U-Net and CLIP ViT-L text encoder, full size, on the meta device (no weights)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # diffusers' defaults are SD1.x's
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12))
    return unet, te


def test_sd15_targets_and_names_are_kohyas(sd15):
    unet, te = sd15
    targets = kohya.target_modules(unet, [te])
    unet_names = kohya.unet_names(unet, "sd1")
    te_prefix = kohya.te_prefixes("sd1", 1)[0]
    names = [unet_names[path] if c == 0 else kohya.te_name(te_prefix, path) for c, path, _ in targets]
    # the counts of a real sd-scripts SD1.5 run: 192 U-Net and 72 text-encoder modules
    assert sum(c == 0 for c, _, _ in targets) == 192 and sum(c == 1 for c, _, _ in targets) == 72
    assert len(set(names)) == len(names)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2" in names
    # SD1.5's proj_in / proj_out are 1×1 convs and are trained (4-D lora_down [r, 320, 1, 1])
    proj_in = dict((p, m) for c, p, m in targets if c == 0)["down_blocks.0.attentions.0.proj_in"]
    assert isinstance(proj_in, torch.nn.Conv2d) and proj_in.kernel_size == (1, 1)


def test_sdxl_names_use_the_sgm_unet_paths():
    from diffusers import UNet2DConditionModel

    config = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                  attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                  addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816, sample_size=128)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    names = kohya.unet_names(unet, "sdxl", dict(unet.config))
    targets = [path for c, path, _ in kohya.target_modules(unet, []) if c == 0]
    assert len(targets) == 722 and all(path in names for path in targets)  # kohya's SDXL U-Net count
    assert names["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"] == \
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    assert kohya.te_prefixes("sdxl", 2) == ["lora_te1_", "lora_te2_"]
    assert kohya.te_name("lora_te2_", "encoder.layers.31.mlp.fc2") == "lora_te2_text_model_encoder_layers_31_mlp_fc2"
    assert kohya.te_name("lora_te1_", "text_model.encoder.layers.0.self_attn.q_proj") == \
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"  # a transformers 4.x path


def test_training_metadata_is_all_strings_the_way_kohya_writes_them():
    meta = kohya.training_metadata(
        output_name="sls", family="sd1", network_dim=4, network_alpha=2.0, session_id=7,
        training_started_at=1700000000.5, learning_rate=0.0001, text_encoder_lr=5e-05, resolution=(64, 64),
        min_bucket_reso=None, bucket_info=None, cache_latents=True, gradient_checkpointing=False,
        tag_frequency={"10_sls 1girl": {"1girl": 23, "café": 2}}, reg_dataset_dirs={},
        optimizer="torch.optim.adamw.AdamW")
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_output_name"] == "sls" and meta["ss_session_id"] == "7"
    assert meta["ss_training_started_at"] == "1700000000.5"
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"]) == ("networks.lora", "4", "2.0")
    assert (meta["ss_learning_rate"], meta["ss_text_encoder_lr"]) == ("0.0001", "5e-05")
    assert meta["ss_resolution"] == "(64, 64)"  # the tuple text, not "64x64"
    assert meta["ss_min_bucket_reso"] == "None" and meta["ss_bucket_info"] == "null"
    assert (meta["ss_cache_latents"], meta["ss_gradient_checkpointing"]) == ("True", "False")
    assert meta["ss_reg_dataset_dirs"] == "{}"
    assert meta["ss_tag_frequency"] == '{"10_sls 1girl": {"1girl": 23, "caf\\u00e9": 2}}'  # ASCII-escaped
    assert json.loads(meta["ss_tag_frequency"])["10_sls 1girl"]["café"] == 2
    assert meta["ss_v2"] == "False" and meta["ss_base_model_version"] == "sd_v1"
    assert "ss_network_args" not in meta  # only written when network args were given
    with_args = kohya.training_metadata(output_name="x", family="sd1", network_dim=8, network_alpha=8,
                                        network_args={"conv_dim": "4"})
    assert json.loads(with_args["ss_network_args"]) == {"conv_dim": "4"}
    assert with_args["ss_session_id"].isdigit() and float(with_args["ss_training_started_at"]) > 1.7e9
    assert kohya.minimum_metadata(with_args) == {k: with_args[k] for k in kohya.MINIMUM_KEYS}


@pytest.mark.parametrize(("family", "v_pred", "version", "v2"), [
    ("sd1", False, "sd_v1", "False"), ("sd2", False, "sd_v2", "True"), ("sd2", True, "sd_v2_v", "True"),
    ("sdxl", False, "sdxl_base_v1-0", "False"),
])
def test_base_model_version(family, v_pred, version, v2):
    meta = kohya.training_metadata(output_name="x", family=family, network_dim=1, network_alpha=1,
                                   v_prediction=v_pred)
    assert (meta["ss_base_model_version"], meta["ss_v2"]) == (version, v2)


def test_save_lora_writes_both_sshs_hashes_as_kohya_precomputes_them(tmp_path):
    # over 1 MiB of tensor data, so the legacy hash's window (64 KiB at 1 MiB) holds tensor bytes
    tensors = {"lora_unet_x.lora_down.weight": torch.arange(400_000, dtype=torch.float32).reshape(4, -1),
               "lora_unet_x.lora_up.weight": torch.ones(8, 4), "lora_unet_x.alpha": torch.tensor(2.0)}
    meta = kohya.training_metadata(output_name="x", family="sd1", network_dim=4, network_alpha=2.0, seed=1)
    extra = {"modelspec.title": "a title that makes the header longer " * 20}
    path = kohya.save_lora(tmp_path / "x.safetensors", tensors, {**meta, **extra})
    with safe_open(path, "pt") as f:
        written = f.metadata()
        assert set(f.keys()) == set(tensors)
    assert written["ss_seed"] == "1" and written["modelspec.title"] == extra["modelspec.title"]
    # sshs_model_hash is the addnet hash of the final file (the tensor bytes are the same)
    assert written["sshs_model_hash"] == addnet_hash_safetensors(path)
    # sshs_legacy_hash is the old hash of an in-memory save with only the ss_* keys ...
    assert written["sshs_legacy_hash"] == model_hash_old_bytes(save(tensors, meta))
    # ... which is not the old hash of the file itself (its header is longer)
    assert written["sshs_legacy_hash"] != model_hash_old(path)
    assert not list(tmp_path.glob(".*"))  # written atomically: no temp file left


def test_fixture_kohya_file_is_written_by_the_kohya_module(tmp_path):
    from core.models.fixtures import tiny_model
    from core.networks.fixtures import write_network_fixtures

    model = tiny_model("sd1", seed=0)
    files = write_network_fixtures(tmp_path, "sd1", model.unet, model.text_encoders, model.spec.unet_config)
    with safe_open(files["kohya"], "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["sshs_model_hash"] == addnet_hash_safetensors(files["kohya"]) and "sshs_legacy_hash" in meta
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert {k.split(".", 1)[1] for k in keys} == {kohya.LORA_DOWN, kohya.LORA_UP, kohya.ALPHA}
