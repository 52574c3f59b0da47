"""Detection details: metadata overrides, prediction type sources, SD2's U-Net test and native size."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelFileError
from core.models.architecture import detect_architecture
from core.models.checkpoint import load_checkpoint
from core.models.state_dict_io import read_state_dict


def tiny(root, name):
    return root / "models" / "Stable-diffusion" / f"{name}.safetensors"


@pytest.fixture(scope="module")
def sd1_tensors(fixture_models_dir):
    return read_state_dict(tiny(fixture_models_dir, "tiny-sd1"))


def test_family_defaults_without_metadata(sd1_tensors, fixture_models_dir):
    spec = detect_architecture(sd1_tensors, {})
    assert (spec.family, spec.native_size, spec.prediction_type, spec.prediction_source) == \
        ("sd1", 512, "epsilon", "default")
    assert spec.unet_config["attention_head_dim"] == 8 and spec.unet_config["sample_size"] == 64
    xl = detect_architecture(read_state_dict(tiny(fixture_models_dir, "tiny-sdxl")), {})
    assert xl.native_size == 1024 and xl.vae_scaling_factor == 0.13025
    assert xl.unet_config["addition_time_embed_dim"] == 8  # (label_emb input - pooled width) / 6


def test_metadata_overrides(sd1_tensors):
    meta = {"kiln.unet.num_attention_heads": "[2, 2, 4, 4]", "kiln.text_encoder.num_attention_heads": "2",
            "kiln.vae.scaling_factor": "0.5", "kiln.native_size": "256", "kiln.prediction_type": "v_prediction"}
    spec = detect_architecture(sd1_tensors, meta)
    assert spec.unet_config["attention_head_dim"] == [2, 2, 4, 4]
    assert spec.text_encoder_configs[0]["num_attention_heads"] == 2
    assert spec.vae_scaling_factor == 0.5 and spec.vae_config["scaling_factor"] == 0.5
    assert spec.native_size == 256 and spec.unet_config["sample_size"] == 32
    assert (spec.prediction_type, spec.prediction_source) == ("v_prediction", "metadata")
    assert detect_architecture(sd1_tensors, {"modelspec.prediction_type": "v"}).prediction_type == "v_prediction"
    assert detect_architecture(sd1_tensors, {"modelspec.resolution": "768x768"}).native_size == 768
    with pytest.raises(ModelFileError, match="num_attention_heads"):
        detect_architecture(sd1_tensors, {"kiln.unet.num_attention_heads": "[2, 2]"})
    assert "norm_num_groups" not in spec.unet_config  # diffusers' 32, as every SD release
    assert detect_architecture(sd1_tensors, {"kiln.unet.norm_num_groups": "8"}).unet_config["norm_num_groups"] == 8
    with pytest.raises(ModelFileError, match="norm_num_groups = 7 does not divide"):
        detect_architecture(sd1_tensors, {"kiln.unet.norm_num_groups": "7"})
    with pytest.raises(ModelFileError, match="prediction_type"):
        detect_architecture(sd1_tensors, {"kiln.prediction_type": "sample"})


def test_saved_overrides_reload(fixture_models_dir, tmp_path):
    from core.models.checkpoint import save_checkpoint

    model = load_checkpoint(tiny(fixture_models_dir, "tiny-sd1"))
    model.spec.vae_scaling_factor = 0.25
    out = save_checkpoint(model, tmp_path / "scaled.safetensors", metadata={"note": "kept"})
    again = load_checkpoint(out)
    assert again.spec.vae_scaling_factor == 0.25 and again.spec.native_size == 64
    assert again.metadata["note"] == "kept"


def test_sd2_unet_test_and_native_size(fixture_models_dir, tmp_path):
    sd = read_state_dict(tiny(fixture_models_dir, "tiny-sd2-v"))
    v_file = tmp_path / "sd2-v.safetensors"
    save_file(sd, str(v_file))  # no metadata: native size follows the prediction type
    v = load_checkpoint(v_file)
    assert (v.spec.prediction_type, v.spec.prediction_source, v.spec.native_size) == ("v_prediction", "unet-test", 768)
    sd["model.diffusion_model.out.2.bias"] = torch.zeros_like(sd["model.diffusion_model.out.2.bias"])
    eps_file = tmp_path / "sd2-eps.safetensors"
    save_file(sd, str(eps_file))
    eps = load_checkpoint(eps_file)
    assert (eps.spec.prediction_type, eps.spec.prediction_source, eps.spec.native_size) == ("epsilon", "unet-test", 512)
    user = load_checkpoint(eps_file, prediction_type="v_prediction")
    assert (user.spec.prediction_type, user.spec.prediction_source, user.spec.native_size) == ("v_prediction", "user", 768)
    with pytest.raises(ModelFileError, match="prediction type"):
        load_checkpoint(eps_file, prediction_type="x0")


def test_sdxl_refiner_and_unet_only_are_refused(fixture_models_dir):
    xl = read_state_dict(tiny(fixture_models_dir, "tiny-sdxl"))
    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in xl.items()
               if not k.startswith("conditioner.embedders.0.")}
    with pytest.raises(ModelFileError, match="refiner"):
        detect_architecture(refiner)
    unet_only = {k: v for k, v in xl.items() if k.startswith("model.diffusion_model.")}
    with pytest.raises(ModelFileError, match="no text encoder"):
        detect_architecture(unet_only)
