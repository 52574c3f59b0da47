"""Single-file checkpoints: detection, load, save round trip, markers, errors (tiny real-layout files)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core.errors import ModelFileError
from core.models import architecture as arch
from core.models.checkpoint import load_checkpoint, save_checkpoint
from core.models.fixtures import tiny_spec
from core.models.state_dict_io import read_safetensors_metadata, read_state_dict

FILES = {"sd1": "tiny-sd1", "sd2": "tiny-sd2-v", "sdxl": "tiny-sdxl"}


def ckpt(root, family):
    return root / "models" / "Stable-diffusion" / f"{FILES[family]}.safetensors"


@pytest.fixture(scope="module")
def loaded(fixture_models_dir):
    return {f: load_checkpoint(ckpt(fixture_models_dir, f)) for f in FILES}


def assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("family", list(FILES))
def test_detects_family_and_configs_from_shapes(loaded, family):
    spec, expected = loaded[family].spec, tiny_spec(family)
    assert spec.family == family
    assert spec.unet_config == expected.unet_config
    assert spec.vae_config == expected.vae_config
    assert spec.text_encoder_configs == expected.text_encoder_configs
    assert spec.native_size == 64  # from kiln.native_size
    assert spec.clip_pad_tokens == expected.clip_pad_tokens
    assert [t.pad_token for t in loaded[family].tokenizers] == expected.clip_pad_tokens


def test_prediction_types(loaded):
    assert loaded["sd1"].spec.prediction_type == "epsilon"
    assert loaded["sdxl"].spec.prediction_type == "epsilon"
    # tiny-sd2-v has no marker: A1111's U-Net test decides, as for real SD2-v files
    assert loaded["sd2"].spec.prediction_type == "v_prediction"
    assert loaded["sd2"].spec.prediction_source == "unet-test"
    assert loaded["sdxl"].spec.vae_scaling_factor == 0.13025
    assert loaded["sd1"].spec.vae_scaling_factor == 0.18215


@pytest.mark.parametrize("family", list(FILES))
def test_load_save_round_trip_is_exact(loaded, fixture_models_dir, family, tmp_path):
    src = ckpt(fixture_models_dir, family)
    out = save_checkpoint(loaded[family], tmp_path / "rt.safetensors", dtype=torch.float16)
    assert_same_tensors(read_state_dict(src), read_state_dict(out))
    assert read_safetensors_metadata(out)["kiln.native_size"] == "64"


def test_sd2_keeps_dropped_block_and_projection_in_passthrough(loaded):
    model = loaded["sd2"]
    assert model.text_encoders[0].config.num_hidden_layers == 2
    assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in model.passthrough
    assert "cond_stage_model.model.text_projection" in model.passthrough
    assert "cond_stage_model.model.logit_scale" in model.passthrough


def test_fp32_load_matches_file_values(loaded, fixture_models_dir):
    model = loaded["sd1"]
    sd = read_state_dict(ckpt(fixture_models_dir, "sd1"))
    w = sd["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"]
    got = model.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight
    assert got.dtype == torch.float32 and torch.equal(got, w.float())
    vae_q = sd["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert vae_q.shape[-2:] == (1, 1)
    assert torch.equal(model.vae.encoder.mid_block.attentions[0].to_q.weight, vae_q[:, :, 0, 0].float())


def test_models_run_forward(loaded):
    model = loaded["sdxl"]
    tok = model.tokenizers[1]
    ids = tok(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    out = model.text_encoders[1](ids, output_hidden_states=True)
    assert out.text_embeds.shape == (1, 48)
    cond = torch.cat([model.text_encoders[0](ids, output_hidden_states=True).hidden_states[-2],
                      out.hidden_states[-2]], dim=-1)
    added = {"text_embeds": out.text_embeds, "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]]).float()}
    with torch.no_grad():
        eps = model.unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=cond, added_cond_kwargs=added).sample
        img = model.vae.decode(eps / model.spec.vae_scaling_factor).sample
    assert eps.shape == (1, 4, 8, 8) and img.shape == (1, 3, 64, 64)


def test_markers_written_and_read(loaded, tmp_path):
    model = loaded["sd1"]
    model.spec.prediction_type, model.spec.zero_terminal_snr = "v_prediction", True
    try:
        out = save_checkpoint(model, tmp_path / "v.safetensors")
    finally:
        model.spec.prediction_type, model.spec.zero_terminal_snr = "epsilon", False
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("v_pred").numel() == 0 and f.get_tensor("ztsnr").numel() == 0
    again = load_checkpoint(out)
    assert again.spec.prediction_type == "v_prediction" and again.spec.prediction_source == "marker"
    assert again.spec.zero_terminal_snr
    assert "v_pred" not in again.passthrough
    # the user's choice wins over the file
    assert load_checkpoint(out, prediction_type="epsilon").spec.prediction_type == "epsilon"


def test_user_prediction_override_on_sd2_is_saved_as_marker(fixture_models_dir, tmp_path):
    model = load_checkpoint(ckpt(fixture_models_dir, "sd2"), prediction_type="epsilon")
    assert model.spec.prediction_type == "epsilon" and model.spec.native_size == 64
    model.spec.prediction_type, model.spec.prediction_source = "v_prediction", "user"
    out = save_checkpoint(model, tmp_path / "sd2.safetensors")
    assert "v_pred" in read_state_dict(out)


def test_old_sd1_clip_naming_loads_and_round_trips(fixture_models_dir, tmp_path):
    sd = read_state_dict(ckpt(fixture_models_dir, "sd1"))
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
           for k, v in sd.items()}
    src = tmp_path / "old.safetensors"
    save_file(old, str(src), metadata=read_safetensors_metadata(ckpt(fixture_models_dir, "sd1")))
    model = load_checkpoint(src)
    assert model.spec.text_encoder_prefixes == [arch.SD1_CLIP_OLD]
    out = save_checkpoint(model, tmp_path / "old-rt.safetensors", dtype=torch.float16)
    assert_same_tensors(old, read_state_dict(out))


def test_pickled_checkpoint_with_state_dict_wrapper(fixture_models_dir, tmp_path):
    sd = read_state_dict(ckpt(fixture_models_dir, "sd1"))
    src = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": sd, "global_step": 470000}, src)
    model = load_checkpoint(src)
    assert model.spec.family == "sd1" and model.spec.native_size == 512  # no metadata in a .ckpt


def test_missing_weight_is_named(fixture_models_dir, tmp_path):
    sd = read_state_dict(ckpt(fixture_models_dir, "sd1"))
    del sd["model.diffusion_model.input_blocks.1.1.proj_out.bias"]
    src = tmp_path / "broken.safetensors"
    save_file(sd, str(src))
    with pytest.raises(ModelFileError, match="missing U-Net weights.*down_blocks.0.attentions.0.proj_out.bias"):
        load_checkpoint(src)


def test_stray_unet_weight_is_refused(fixture_models_dir, tmp_path):
    sd = read_state_dict(ckpt(fixture_models_dir, "sd1"))
    sd["model.diffusion_model.extra.weight"] = torch.zeros(2)
    src = tmp_path / "stray.safetensors"
    save_file(sd, str(src))
    with pytest.raises(ModelFileError, match="unexpected weights.*extra.weight"):
        load_checkpoint(src)


@pytest.mark.parametrize("tensors,expected", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, "models/Lora"),
    ({"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_out.weight": torch.zeros(1)}, "models/VAE"),
    ({"string_to_param.*": torch.zeros(1, 4)}, "embeddings/"),
    ({"foo": torch.zeros(1)}, "not a Stable Diffusion checkpoint"),
])
def test_non_checkpoints_say_what_they_are(tmp_path, tensors, expected):
    src = tmp_path / "thing.safetensors"
    save_file(tensors, str(src))
    with pytest.raises(ModelFileError, match=expected) as info:
        load_checkpoint(src)
    assert str(src) in str(info.value)
