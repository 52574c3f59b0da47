"""Tiny random models in the real single-file layouts, for tests and demos.

``python -m core.models.fixtures --out DIR [--full-size]`` writes::

    DIR/models/Stable-diffusion/tiny-sd1.safetensors     SD1: HF CLIP-L naming, conv proj_in
    DIR/models/Stable-diffusion/tiny-sd2-v.safetensors   SD2: OpenCLIP (fused in_proj), linear proj_in
    DIR/models/Stable-diffusion/tiny-sdxl.safetensors    SDXL: both embedders + label_emb
    DIR/models/VAE/tiny-vae.safetensors                  standalone VAE (encoder.*/decoder.*)
    DIR/models/Stable-diffusion/full-size-sd15.safetensors   (--full-size: SD1.5 dimensions, fp16)

Each model is built from diffusers/transformers classes, filled from a fixed-seed torch.Generator
and saved through ``save_checkpoint``, so the files go through the same layout tables as real
ones. The tiny models keep the real block structure (levels, layers per block, which blocks have
attention, so ``input_blocks.4.1...`` names exist as in the real models) with 32/64 channels and
3-layer text encoders; their native size is 64 px (``kiln.native_size``).

One function per artifact: helpers add their own (LoRAs, embeddings...) next to these.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from core.fileio import atomic_save_with, atomic_write_json
from core.models import architecture as arch
from core.models.architecture import ModelSpec
from core.models.checkpoint import LoadedModel, empty_text_encoder, empty_unet, empty_vae, save_checkpoint
from core.models.layout import apply_rules_to_file, vae_rules

SEED = 20240601
TINY_NATIVE_SIZE = 64
TINY_TEXT = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 3,
             "max_position_embeddings": 77, "num_attention_heads": 1, "layer_norm_eps": 1e-5,
             "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
FIXTURE_DTYPE = torch.float16


# ---------------------------------------------------------------------------------------------
# Deterministic weights
# ---------------------------------------------------------------------------------------------


def random_weights(module: torch.nn.Module, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded values for every parameter of ``module`` (may be on the meta device):
    norm weights ~1, biases ~0, matrices ~N(0, 1/fan_in); drawn in fp32, stored as ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in sorted(module.named_parameters()):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if p.ndim == 1 and "norm" in name and name.endswith("weight"):
            noise.mul_(0.02).add_(1.0)
        elif p.ndim <= 1:
            noise.mul_(0.02)
        else:
            noise.div_(math.sqrt(p[0].numel()))
        out[name] = noise.to(dtype)
    return out


def randomize_(module: torch.nn.Module, seed: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Give ``module`` (built on the meta device or not) the weights of ``random_weights``."""
    module.load_state_dict(random_weights(module, seed, dtype), strict=False, assign=True)
    return module


def _random(shape, gen: torch.Generator, scale: float = 0.02) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * scale


def scaled_linear_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """The SD training schedule (beta 0.00085..0.012, scaled linear) that real files carry along."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


# ---------------------------------------------------------------------------------------------
# Tiny specs (exactly what detect_architecture reads back from the saved files)
# ---------------------------------------------------------------------------------------------


def tiny_unet_config(family: str) -> dict:
    if family == "sdxl":
        return {
            "sample_size": TINY_NATIVE_SIZE // 8, "in_channels": 4, "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [32, 32, 64], "layers_per_block": 2, "cross_attention_dim": 32 + 48,
            "attention_head_dim": [1, 1, 1], "use_linear_projection": True,
            "transformer_layers_per_block": [1, 1, 2],
            "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 48 + 6 * 8,
        }
    return {
        "sample_size": TINY_NATIVE_SIZE // 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [32, 32, 64, 64], "layers_per_block": 2, "cross_attention_dim": 32,
        "attention_head_dim": 8 if family == "sd1" else [1, 1, 1, 1],
        "use_linear_projection": family != "sd1", "transformer_layers_per_block": 1,
    }


def tiny_vae_config(scaling_factor: float) -> dict:
    return {
        "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [32, 32, 64, 64], "layers_per_block": 2, "latent_channels": 4,
        "sample_size": TINY_NATIVE_SIZE, "scaling_factor": scaling_factor,
    }


def tiny_text_config(kind: str) -> dict:
    """kind: "clip_l" (HF CLIP, quick_gelu), "openclip_h" (SD2, last layer dropped), "openclip_g" (SDXL)."""
    config = dict(TINY_TEXT)
    if kind == "clip_l":
        config.update(architectures=["CLIPTextModel"], hidden_act="quick_gelu", projection_dim=32)
    elif kind == "openclip_h":
        config.update(architectures=["CLIPTextModel"], hidden_act="gelu", projection_dim=32,
                      num_hidden_layers=TINY_TEXT["num_hidden_layers"] - 1)
    else:
        # wider than the tiny CLIP-L (as bigG's 1280 vs 768): diffusers tells SDXL's encoders apart by width
        config.update(architectures=["CLIPTextModelWithProjection"], hidden_act="gelu", hidden_size=48,
                      intermediate_size=192, projection_dim=48)
    return config


def tiny_spec(family: str) -> ModelSpec:
    if family == "sdxl":
        te = [tiny_text_config("clip_l"), tiny_text_config("openclip_g")]
        prefixes, formats = [arch.SDXL_CLIP_L, arch.SDXL_CLIP_G], ["hf", "openclip"]
        pads = [arch.PAD_CLIP_L, arch.PAD_OPEN_CLIP]
    elif family == "sd2":
        te, prefixes, formats, pads = [tiny_text_config("openclip_h")], [arch.SD2_OPENCLIP], ["openclip"], \
            [arch.PAD_OPEN_CLIP]
    else:
        te, prefixes, formats, pads = [tiny_text_config("clip_l")], [arch.SD1_CLIP], ["hf"], [arch.PAD_CLIP_L]
    scaling = arch.FAMILY_VAE_SCALING[family]
    return ModelSpec(
        family=family, prediction_type="v_prediction" if family == "sd2" else "epsilon",
        zero_terminal_snr=False, native_size=TINY_NATIVE_SIZE, unet_config=tiny_unet_config(family),
        vae_config=tiny_vae_config(scaling), text_encoder_configs=te, clip_pad_token=pads[0],
        vae_scaling_factor=scaling, clip_pad_tokens=pads, text_encoder_prefixes=prefixes,
        text_encoder_formats=formats, native_size_fixed=True,
        # SD2-v is told apart by A1111's U-Net test (no marker in the file), like real SD2-v files.
        prediction_source="unet-test" if family == "sd2" else "default")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def random_models(spec: ModelSpec, seed: int, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A LoadedModel of ``spec`` with seeded random weights (no passthrough yet)."""
    unet = randomize_(empty_unet(spec.unet_config), seed, dtype)
    vae = randomize_(empty_vae(spec.vae_config), seed + 1, dtype)
    encoders = [randomize_(empty_text_encoder(c), seed + 2 + i, dtype)
                for i, c in enumerate(spec.text_encoder_configs)]
    for m in (unet, vae, *encoders):
        m.eval().requires_grad_(False)
    # No tokenizers: fixtures are only saved; load_checkpoint gives the loaded model its own.
    return LoadedModel(spec=spec, unet=unet, vae=vae, text_encoders=encoders, tokenizers=[])


def _openclip_block(prefix: str, hidden: int, intermediate: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One OpenCLIP resblock in file naming (SD2's last block, which the HF model does not keep)."""
    return {
        f"{prefix}.ln_1.weight": 1 + _random(hidden, gen), f"{prefix}.ln_1.bias": _random(hidden, gen),
        f"{prefix}.attn.in_proj_weight": _random((3 * hidden, hidden), gen, hidden ** -0.5),
        f"{prefix}.attn.in_proj_bias": _random(3 * hidden, gen),
        f"{prefix}.attn.out_proj.weight": _random((hidden, hidden), gen, hidden ** -0.5),
        f"{prefix}.attn.out_proj.bias": _random(hidden, gen),
        f"{prefix}.ln_2.weight": 1 + _random(hidden, gen), f"{prefix}.ln_2.bias": _random(hidden, gen),
        f"{prefix}.mlp.c_fc.weight": _random((intermediate, hidden), gen, hidden ** -0.5),
        f"{prefix}.mlp.c_fc.bias": _random(intermediate, gen),
        f"{prefix}.mlp.c_proj.weight": _random((hidden, intermediate), gen, intermediate ** -0.5),
        f"{prefix}.mlp.c_proj.bias": _random(hidden, gen),
    }


def real_file_extras(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """Tensors real single files carry that the diffusers models do not use (kept as passthrough)."""
    gen = torch.Generator().manual_seed(seed)
    extras: dict[str, torch.Tensor] = {"alphas_cumprod": scaled_linear_alphas_cumprod()}
    positions = torch.arange(77, dtype=torch.int64)[None]
    if spec.family == "sd1":
        extras[f"{arch.SD1_CLIP}embeddings.position_ids"] = positions
    elif spec.family == "sd2":
        te = spec.text_encoder_configs[0]
        hidden, layers = te["hidden_size"], te["num_hidden_layers"]
        extras.update(_openclip_block(f"{arch.SD2_OPENCLIP}transformer.resblocks.{layers}", hidden,
                                      te["intermediate_size"], gen))
        extras[f"{arch.SD2_OPENCLIP}text_projection"] = _random((hidden, hidden), gen, hidden ** -0.5)
        extras[f"{arch.SD2_OPENCLIP}logit_scale"] = torch.tensor(math.log(100.0))
    else:
        extras[f"{arch.SDXL_CLIP_L}embeddings.position_ids"] = positions
        extras[f"{arch.SDXL_CLIP_G}logit_scale"] = torch.tensor(math.log(100.0))
    return extras


def tiny_model(family: str, seed: int = SEED) -> LoadedModel:
    spec = tiny_spec(family)
    model = random_models(spec, seed)
    model.passthrough = real_file_extras(spec, seed + 100)
    if family == "sd2":
        # Make A1111's SD2 v-prediction test (mean(unet(0.5, t=999) - 0.5) < -1) answer "v" for this
        # file, as it does for real SD2-v checkpoints, so the test path runs without a marker.
        with torch.no_grad():
            model.unet.conv_out.bias.fill_(-1.5)
    return model


# ---------------------------------------------------------------------------------------------
# Artifacts (one function each)
# ---------------------------------------------------------------------------------------------


def write_tiny_checkpoint(out_dir: str | Path, family: str) -> Path:
    name = {"sd1": "tiny-sd1", "sd2": "tiny-sd2-v", "sdxl": "tiny-sdxl"}[family]
    path = Path(out_dir) / "models" / "Stable-diffusion" / f"{name}.safetensors"
    return save_checkpoint(tiny_model(family), path, dtype=FIXTURE_DTYPE)


def write_tiny_inpainting_checkpoint(out_dir: str | Path, seed: int = SEED + 3) -> Path:
    """An SD1 inpainting checkpoint in the sd-v1-5-inpainting layout: 9 U-Net input channels
    (4 latent + 1 mask + 4 masked-picture latent), told apart from tensor shapes alone."""
    import dataclasses

    spec = tiny_spec("sd1")
    spec = dataclasses.replace(spec, unet_config={**spec.unet_config, "in_channels": 9})
    model = random_models(spec, seed)
    model.passthrough = real_file_extras(spec, seed + 100)
    path = Path(out_dir) / "models" / "Stable-diffusion" / "tiny-sd1-inpainting.safetensors"
    return save_checkpoint(model, path, dtype=FIXTURE_DTYPE)


def write_tiny_vae(out_dir: str | Path, seed: int = SEED + 7) -> Path:
    """A standalone VAE file (A1111 layout: no prefix) with weights unlike the checkpoints' own."""
    from safetensors.torch import save_file

    config = tiny_vae_config(arch.FAMILY_VAE_SCALING["sd1"])
    vae = randomize_(empty_vae(config), seed)
    tensors = apply_rules_to_file({"vae": vae.state_dict()}, vae_rules(config, ""))
    tensors = {k: v.to(FIXTURE_DTYPE).contiguous() for k, v in tensors.items()}
    path = Path(out_dir) / "models" / "VAE" / "tiny-vae.safetensors"
    return atomic_save_with(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def full_size_sd15_spec() -> ModelSpec:
    te = {**TINY_TEXT, "architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
          "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "projection_dim": 768}
    unet = {
        "sample_size": 64, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn", "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 768,
        "attention_head_dim": 8, "use_linear_projection": False, "transformer_layers_per_block": 1,
    }
    vae = {**tiny_vae_config(0.18215), "block_out_channels": [128, 256, 512, 512], "sample_size": 512}
    return ModelSpec(family="sd1", prediction_type="epsilon", zero_terminal_snr=False, native_size=512,
                     unet_config=unet, vae_config=vae, text_encoder_configs=[te], clip_pad_token=arch.PAD_CLIP_L,
                     vae_scaling_factor=0.18215, clip_pad_tokens=[arch.PAD_CLIP_L],
                     text_encoder_prefixes=[arch.SD1_CLIP], text_encoder_formats=["hf"])


def write_full_size_sd15(out_dir: str | Path, seed: int = SEED) -> Path:
    """A random-weight checkpoint with SD1.5's dimensions (fp16, about 2 GB) for load benchmarks."""
    spec = full_size_sd15_spec()
    model = random_models(spec, seed, torch.float16)  # fp16 from the start: half the peak memory
    model.passthrough = real_file_extras(spec, seed + 100)
    path = Path(out_dir) / "models" / "Stable-diffusion" / "full-size-sd15.safetensors"
    return save_checkpoint(model, path, dtype=torch.float16)


def write_diffusers_config_dir(spec: ModelSpec, out_dir: str | Path) -> Path:
    """A diffusers pipeline folder with configs only (no weights) for ``spec``: what
    ``from_single_file(path, config=out_dir, local_files_only=True)`` needs to load a Kiln file offline."""
    import json
    import shutil

    from core.models.checkpoint import TOKENIZER_DIR

    out = Path(out_dir)
    sdxl = spec.family == "sdxl"

    def write(rel: str, obj: dict) -> None:
        atomic_write_json(out / rel, obj)

    encoders = spec.text_encoder_configs
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    if not sdxl:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    for i, (config, pad) in enumerate(zip(encoders, spec.clip_pad_tokens)):
        suffix = "" if i == 0 else f"_{i + 1}"
        index[f"text_encoder{suffix}"] = ["transformers", config["architectures"][0]]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
        write(f"text_encoder{suffix}/config.json", {"model_type": "clip_text_model", **config})
        tok_dir = out / f"tokenizer{suffix}"
        tok_dir.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(TOKENIZER_DIR / name, tok_dir / name)
        tok_config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
        write(f"tokenizer{suffix}/tokenizer_config.json", {**tok_config, "pad_token": pad})
    write("model_index.json", index)
    write("unet/config.json", {"_class_name": "UNet2DConditionModel", **spec.unet_config})
    write("vae/config.json", {"_class_name": "AutoencoderKL", **spec.vae_config})
    write("scheduler/scheduler_config.json", {
        "_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": spec.prediction_type,
        "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
        "rescale_betas_zero_snr": spec.zero_terminal_snr, "timestep_spacing": "leading"})
    return out


def write_tiny_networks(out_dir: str | Path, family: str = "sd1") -> dict[str, Path]:
    """LoRA/LyCORIS/PEFT files, embeddings and a hypernetwork that fit ``tiny_model(family)``."""
    from core.networks.fixtures import write_network_fixtures

    model = tiny_model(family)
    return write_network_fixtures(Path(out_dir), family, model.unet, model.text_encoders, model.spec.unet_config)


def build_fixture_models(out_dir: str | Path, *, full_size: bool = False, networks: bool = True) -> dict[str, Path]:
    """Write every fixture under ``out_dir``; returns {"sd1", "sd2", "sdxl", "vae", network formats...
    [, "full_sd15"]: path}. The networks (models/Lora, embeddings, models/hypernetworks) fit tiny-sd1."""
    out = {family: write_tiny_checkpoint(out_dir, family) for family in ("sd1", "sd2", "sdxl")}
    out["vae"] = write_tiny_vae(out_dir)
    if networks:
        out.update(write_tiny_networks(out_dir, "sd1"))
    if full_size:
        out["full_sd15"] = write_full_size_sd15(out_dir)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.models.fixtures", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write models/ into")
    parser.add_argument("--full-size", action="store_true", help="also write a full SD1.5-size checkpoint (~2 GB)")
    args = parser.parse_args(argv)
    for name, path in build_fixture_models(args.out, full_size=args.full_size).items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
