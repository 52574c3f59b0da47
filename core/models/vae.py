"""External VAE files (A1111 layout), swapping them into a loaded model, and decoding latents."""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import ModelFileError
from core.models.architecture import ModelSpec, vae_config_from_shapes
from core.models.folders import natural_key, walk_files
from core.models.layout import VAE_PREFIX, apply_rules_to_model, normalize_vae_ldm_key, vae_rules
from core.models.state_dict_io import read_state_dict

VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
# "None"/"Automatic" as the WebUI's VAE dropdown says them: both mean the checkpoint's own VAE here
# (the caller resolves "Automatic" to a file near the checkpoint first, via find_vae_for_checkpoint).
OWN_VAE_NAMES = ("None", "Automatic", "")
_STRUCTURE_KEYS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels")


def _standalone_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VAE tensors without prefix; ``loss*`` / ``model_ema.*`` dropped as A1111 does."""
    if any(k.startswith(VAE_PREFIX) for k in state_dict):  # a VAE cut out of a checkpoint with its prefix
        state_dict = {k[len(VAE_PREFIX):]: v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    return {normalize_vae_ldm_key(k): v for k, v in state_dict.items()
            if not k.startswith(("loss", "model_ema."))}


def load_vae_file(path: str | Path, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """A standalone VAE file -> state dict for the diffusers ``AutoencoderKL`` of ``spec``."""
    path = Path(path)
    tensors = _standalone_tensors(read_state_dict(path))
    if "encoder.conv_in.weight" not in tensors or "decoder.conv_out.weight" not in tensors:
        raise ModelFileError("not a VAE (no encoder.conv_in / decoder.conv_out weights)", path=path,
                             hint="put only VAE files in models/VAE")
    found = vae_config_from_shapes(tensors, "", spec.vae_scaling_factor, spec.native_size, path)
    expected = spec.vae_config
    different = [k for k in _STRUCTURE_KEYS if found.get(k) != expected.get(k)]
    if different:
        detail = ", ".join(f"{k} {found.get(k)} vs {expected.get(k)}" for k in different)
        raise ModelFileError(f"this VAE does not fit the checkpoint ({detail})", path=path,
                             hint="choose a VAE made for this model family")
    converted = apply_rules_to_model(tensors, vae_rules(expected, ""), ["vae"])
    return converted["vae"]


def _load_into(vae, state_dict: dict[str, torch.Tensor], path) -> None:
    param = next(vae.parameters())
    cast = {k: v.to(device=param.device, dtype=param.dtype if v.is_floating_point() else v.dtype)
            for k, v in state_dict.items()}
    missing, unexpected = vae.load_state_dict(cast, strict=False)
    if missing or unexpected:
        raise ModelFileError(
            f"VAE weights do not match: {len(missing)} missing (e.g. {', '.join(missing[:3])}), "
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})", path=path,
            hint="the VAE file is incomplete or of another architecture")


def apply_vae(model, path: str | Path | None) -> None:
    """Put the VAE file ``path`` into ``model`` (a LoadedModel); None/"None"/"Automatic" restores its own."""
    if path is None or str(path) in OWN_VAE_NAMES:
        if model.own_vae_state is not None:
            _load_into(model.vae, model.own_vae_state, model.path)
            model.own_vae_state = None
        model.vae_path = None
        return
    path = Path(path)
    if model.vae_path is not None and Path(model.vae_path) == path:
        return
    weights = load_vae_file(path, model.spec)  # read before touching the model: a bad file changes nothing
    if model.own_vae_state is None:
        model.own_vae_state = {k: v.detach().to("cpu", copy=True) for k, v in model.vae.state_dict().items()}
    _load_into(model.vae, weights, path)
    model.vae_path = path


def list_vae_files(vae_dir: str | Path | None, ckpt_dir: str | Path | None = None) -> list[Path]:
    """A1111's VAE list: ``**/*.vae.{ckpt,pt,safetensors}`` under the checkpoint folder, then every
    ``.ckpt/.pt/.safetensors`` under the VAE folder; one per file name, natural-sorted by name."""
    by_name: dict[str, Path] = {}
    for p in walk_files(ckpt_dir, tuple(f".vae{s}" for s in VAE_SUFFIXES)) + walk_files(vae_dir, VAE_SUFFIXES):
        by_name[p.name] = p
    return [by_name[n] for n in sorted(by_name, key=natural_key)]


def find_vae_for_checkpoint(ckpt_path: str | Path, vae_dir: str | Path | None,
                            ckpt_dir: str | Path | None = None) -> Path | None:
    """The VAE A1111 picks "near" a checkpoint: the first VAE whose file name starts with the
    checkpoint's stem (``model.vae.safetensors`` beside ``model.safetensors``, or ``model*.pt`` in
    models/VAE). ``ckpt_dir`` defaults to the checkpoint's own folder."""
    ckpt_path = Path(ckpt_path)
    stem = ckpt_path.name.rsplit(".", 1)[0]
    for vae in list_vae_files(vae_dir, ckpt_dir if ckpt_dir is not None else ckpt_path.parent):
        if vae.name.startswith(stem) and vae != ckpt_path:
            return vae
    return None


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, scaling_factor: float, upcast_on_nan: bool = True) -> torch.Tensor:
    """Latents -> float images in [0, 1], NCHW. A half-precision VAE that produces NaNs (the SD1/SDXL
    VAEs overflow in fp16) decodes again in fp32, like A1111's "revert VAE to 32-bit floats"."""
    param = next(vae.parameters())
    images = vae.decode(latents.to(device=param.device, dtype=param.dtype) / scaling_factor).sample
    if upcast_on_nan and param.dtype != torch.float32 and not torch.isfinite(images).all():
        original = param.dtype
        torch.nn.Module.to(vae, dtype=torch.float32)
        try:
            images = vae.decode(latents.to(device=param.device, dtype=torch.float32) / scaling_factor).sample
        finally:
            torch.nn.Module.to(vae, dtype=original)
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
