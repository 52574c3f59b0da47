"""External VAE files: A1111 layout, swapping in and back, lookup near checkpoints, NaN-safe decoding."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelFileError
from core.models.checkpoint import load_checkpoint
from core.models.state_dict_io import read_state_dict
from core.models.vae import apply_vae, decode_latents, find_vae_for_checkpoint, load_vae_file


@pytest.fixture(scope="module")
def sd1(fixture_models_dir):
    return load_checkpoint(fixture_models_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")


def vae_file(root):
    return root / "models" / "VAE" / "tiny-vae.safetensors"


def test_load_vae_file_maps_a1111_layout(sd1, fixture_models_dir):
    raw = read_state_dict(vae_file(fixture_models_dir))
    assert "decoder.mid.attn_1.proj_out.weight" in raw and not any(k.startswith("first_stage") for k in raw)
    sd = load_vae_file(vae_file(fixture_models_dir), sd1.spec)
    assert torch.equal(sd["decoder.mid_block.attentions.0.to_out.0.weight"],
                       raw["decoder.mid.attn_1.proj_out.weight"][:, :, 0, 0])
    assert torch.equal(sd["decoder.up_blocks.0.resnets.0.conv1.weight"], raw["decoder.up.3.block.0.conv1.weight"])


def test_old_attention_names_and_junk_keys_are_accepted(sd1, fixture_models_dir, tmp_path):
    raw = read_state_dict(vae_file(fixture_models_dir))
    renamed = {k.replace("attn_1.q.", "attn_1.query.").replace("attn_1.proj_out.", "attn_1.proj_attn."): v
               for k, v in raw.items()}
    renamed["loss.logvar"] = torch.zeros(1)
    renamed["model_ema.decay"] = torch.tensor(0.999)
    p = tmp_path / "old.vae.pt"
    torch.save({"state_dict": renamed}, p)
    assert load_vae_file(p, sd1.spec).keys() == load_vae_file(vae_file(fixture_models_dir), sd1.spec).keys()


def test_apply_and_restore(fixture_models_dir):
    model = load_checkpoint(fixture_models_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    own = model.vae.decoder.conv_out.weight.clone()
    apply_vae(model, vae_file(fixture_models_dir))
    external = read_state_dict(vae_file(fixture_models_dir))["decoder.conv_out.weight"].float()
    assert torch.equal(model.vae.decoder.conv_out.weight, external)
    assert model.vae_path == vae_file(fixture_models_dir)
    apply_vae(model, "Automatic")
    assert torch.equal(model.vae.decoder.conv_out.weight, own) and model.vae_path is None


def test_load_checkpoint_with_vae_path(fixture_models_dir):
    model = load_checkpoint(fixture_models_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors",
                            vae_path=vae_file(fixture_models_dir))
    external = read_state_dict(vae_file(fixture_models_dir))["encoder.conv_in.weight"].float()
    assert torch.equal(model.vae.encoder.conv_in.weight, external)


def test_vae_that_does_not_fit_is_refused(sd1, tmp_path):
    p = tmp_path / "wrong.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(16, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 16, 3, 3),
               "decoder.conv_in.weight": torch.zeros(16, 4, 3, 3)}, str(p))
    with pytest.raises(ModelFileError, match="does not fit"):
        load_vae_file(p, sd1.spec)
    with pytest.raises(ModelFileError, match="not a VAE"):
        save_file({"foo": torch.zeros(1)}, str(tmp_path / "foo.safetensors"))
        load_vae_file(tmp_path / "foo.safetensors", sd1.spec)


def test_find_vae_for_checkpoint(tmp_path):
    ck, vae = tmp_path / "Stable-diffusion", tmp_path / "VAE"
    for p in (ck / "model.safetensors", ck / "other.safetensors", vae / "other-vae.pt", vae / "z.safetensors"):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert find_vae_for_checkpoint(ck / "model.safetensors", vae) is None
    near = ck / "model.vae.safetensors"
    near.write_bytes(b"x")
    assert find_vae_for_checkpoint(ck / "model.safetensors", vae) == near
    assert find_vae_for_checkpoint(ck / "other.safetensors", vae) == vae / "other-vae.pt"


def test_decode_latents_range_and_nan_fallback(fixture_models_dir):
    model = load_checkpoint(fixture_models_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    vae, scale = model.vae, model.spec.vae_scaling_factor
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    img = decode_latents(vae, latents, scale)
    assert img.shape == (1, 3, 64, 64) and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    # Huge activations overflow fp16 (NaN after the next GroupNorm) but not fp32, as with the real
    # SD VAEs in half precision: decoding falls back to fp32 and gives the fp32 image.
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)
        vae.decoder.conv_in.weight.copy_(vae.decoder.conv_in.weight.half().float())
    small = latents[:, :, :2, :2]  # fp16 convolutions are slow on CPU: keep this part 16x16 px
    reference = decode_latents(vae, small, scale)
    vae.half()
    with torch.no_grad():
        raw = vae.decode(small.half() / scale).sample
    assert not torch.isfinite(raw).all()
    retried = decode_latents(vae, small, scale)
    assert vae.dtype == torch.float16
    assert torch.allclose(retried, reference, atol=2e-2)
    assert torch.isnan(decode_latents(vae, small, scale, upcast_on_nan=False)).any()
