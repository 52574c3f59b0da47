"""Load a single-file SD1/SD2/SDXL checkpoint into diffusers/transformers models, and save one back.

Models are built on the meta device (no random init, no double allocation) and the file's tensors
are assigned into them, so a load costs one read of the file. Every tensor the models do not use
is kept in ``LoadedModel.passthrough`` and written back by ``save_checkpoint``: load -> save gives
back the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import ModelFileError
from core.fileio import atomic_save_with
from core.models import architecture as arch
from core.models.architecture import ModelSpec, detect_architecture, resolve_prediction
from core.models.layout import UNET_PREFIX, VAE_PREFIX, diffusers_to_ldm, ldm_to_diffusers
from core.models.state_dict_io import read_safetensors_metadata, read_state_dict

TOKENIZER_DIR = Path(__file__).resolve().parent / "clip_tokenizer"


@dataclass
class LoadedModel:
    spec: ModelSpec
    unet: Any
    vae: Any
    text_encoders: list
    tokenizers: list
    path: Path | None = None
    passthrough: dict[str, torch.Tensor] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    # safetensors metadata of the file it came from (kept on save, except stale kiln.* keys).
    metadata: dict[str, str] = field(default_factory=dict)
    # The VAE file applied over the checkpoint's own (None = its own), and the own weights to restore.
    vae_path: Path | None = None
    own_vae_state: dict[str, torch.Tensor] | None = None

    def components(self) -> dict[str, dict[str, torch.Tensor]]:
        """Current weights as {"unet", "vae", "text_encoder"[, "text_encoder_2"], "passthrough"}."""
        out = {"unet": self.unet.state_dict(), "vae": self.vae.state_dict(), "passthrough": self.passthrough}
        for name, te in zip(["text_encoder", "text_encoder_2"], self.text_encoders):
            out[name] = te.state_dict()
        return out


# ---------------------------------------------------------------------------------------------
# Building models
# ---------------------------------------------------------------------------------------------


def _empty(factory):
    # torch.device("meta") is a per-thread mode: two workers may build models at once
    # (--device-id 0,1), which accelerate's init_empty_weights (it swaps nn.Module.register_parameter
    # for the whole process) does not allow. Non-persistent buffers are rebuilt in assign_weights.
    with torch.device("meta"):
        return factory()


def _rebuild_meta_buffers(model) -> None:
    """Non-persistent buffers are not in files and stay on the meta device after an empty build;
    the only one SD models have is CLIP's ``position_ids`` (0..n-1)."""
    for name, buffer in list(model.named_buffers()):
        if buffer.device.type != "meta":
            continue
        owner_name, _, leaf = name.rpartition(".")
        if leaf != "position_ids":
            raise RuntimeError(f"{type(model).__name__} has a buffer Kiln cannot rebuild: {name}")
        value = torch.arange(buffer.shape[-1], dtype=buffer.dtype).expand(buffer.shape).clone()
        model.get_submodule(owner_name).register_buffer(leaf, value, persistent=False)


def empty_unet(config: dict):
    from diffusers import UNet2DConditionModel

    return _empty(lambda: UNet2DConditionModel.from_config(config))


def empty_vae(config: dict):
    from diffusers import AutoencoderKL

    return _empty(lambda: AutoencoderKL.from_config(config))


def text_encoder_class(config: dict):
    import transformers

    return getattr(transformers, (config.get("architectures") or ["CLIPTextModel"])[0])


def empty_text_encoder(config: dict):
    import transformers

    return _empty(lambda: text_encoder_class(config)(transformers.CLIPTextConfig(**config)))


def load_tokenizer(pad_token: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True, pad_token=pad_token)


def assign_weights(model, state_dict: dict[str, torch.Tensor], *, what: str, path, device, dtype) -> None:
    """Strictly load ``state_dict`` into a meta-device model, casting floating tensors to ``dtype``."""
    prepared = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(prepared, strict=False, assign=True)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing {what} weights (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected {what} weights (e.g. {', '.join(unexpected[:3])})")
        raise ModelFileError("; ".join(parts), path=path,
                             hint="the file is incomplete or a variant Kiln does not support")
    _rebuild_meta_buffers(model)
    # Non-persistent float buffers follow the weights. torch's own .to: diffusers' override warns
    # about fp32-pinned modules, which SD models do not have.
    torch.nn.Module.to(model, device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)


def _check_unclaimed(passthrough: dict[str, torch.Tensor], path) -> None:
    """U-Net / VAE tensors no rule claimed mean the layout was misread: refuse rather than drop them."""
    stray = sorted(k for k in passthrough
                   if k.startswith(UNET_PREFIX) or (k.startswith(VAE_PREFIX) and not k.startswith(VAE_PREFIX + "loss")))
    if stray:
        raise ModelFileError(f"{len(stray)} unexpected weights (e.g. {', '.join(stray[:3])})", path=path,
                             hint="the file is a variant Kiln does not support")


def build_loaded_model(spec: ModelSpec, components: dict[str, dict[str, torch.Tensor]], *, path=None,
                       device="cpu", dtype=torch.float32, prediction_type: str | None = None,
                       metadata: dict[str, str] | None = None) -> LoadedModel:
    """Models for ``spec`` holding ``components`` (as returned by ``ldm_to_diffusers``)."""
    unet = empty_unet(spec.unet_config)
    assign_weights(unet, components["unet"], what="U-Net", path=path, device=device, dtype=dtype)
    resolve_prediction(spec, unet, prediction_type)
    vae = empty_vae(spec.vae_config)
    assign_weights(vae, components["vae"], what="VAE", path=path, device=device, dtype=dtype)
    encoders = []
    for name, config in zip(["text_encoder", "text_encoder_2"], spec.text_encoder_configs):
        te = empty_text_encoder(config)
        assign_weights(te, components[name], what=f"text encoder ({name})", path=path, device=device, dtype=dtype)
        encoders.append(te)
    pads = spec.clip_pad_tokens or [spec.clip_pad_token]
    return LoadedModel(
        spec=spec, unet=unet, vae=vae, text_encoders=encoders, tokenizers=[load_tokenizer(p) for p in pads],
        path=Path(path) if path is not None else None,
        passthrough={k: v for k, v in components.get("passthrough", {}).items() if k not in arch.MARKER_KEYS},
        dtype=dtype, device=device, metadata=dict(metadata or {}))


# ---------------------------------------------------------------------------------------------
# Load / save
# ---------------------------------------------------------------------------------------------


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    return read_safetensors_metadata(path) if Path(path).suffix.lower() == ".safetensors" else {}


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    vae_path: str | Path | None = None, prediction_type: str | None = None) -> LoadedModel:
    """Load a single-file checkpoint (never touching the network); ``vae_path`` replaces its VAE."""
    path = Path(path)
    metadata = read_checkpoint_metadata(path)
    state_dict = read_state_dict(path)
    spec = detect_architecture(state_dict, metadata, path=path)
    components = ldm_to_diffusers(state_dict, spec)
    del state_dict
    _check_unclaimed(components["passthrough"], path)
    model = build_loaded_model(spec, components, path=path, device=device, dtype=dtype,
                               prediction_type=prediction_type, metadata=metadata)
    if vae_path is not None:
        from core.models.vae import apply_vae

        apply_vae(model, vae_path)
    return model


def kiln_metadata(spec: ModelSpec) -> dict[str, str]:
    """``kiln.*`` keys for whatever in ``spec`` the family conventions would not reproduce on load."""
    import json

    out: dict[str, str] = {}
    channels = spec.unet_config["block_out_channels"]
    heads = spec.unet_config["attention_head_dim"]
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
    expected = [8] * len(channels) if spec.family == "sd1" else [max(1, c // 64) for c in channels]
    if heads != expected:
        out[arch.META_UNET_HEADS] = json.dumps(heads)
    groups = int(spec.unet_config.get("norm_num_groups", 32))
    if groups != 32:
        out[arch.META_UNET_NORM_GROUPS] = str(groups)
    te_heads = [c["num_attention_heads"] for c in spec.text_encoder_configs]
    if te_heads != [max(1, c["hidden_size"] // 64) for c in spec.text_encoder_configs]:
        out[arch.META_TEXT_HEADS] = json.dumps(te_heads)
    if spec.vae_scaling_factor != arch.FAMILY_VAE_SCALING[spec.family]:
        out[arch.META_VAE_SCALING] = repr(float(spec.vae_scaling_factor))
    if spec.native_size != arch.default_native_size(spec.family, spec.prediction_type):
        out[arch.META_NATIVE_SIZE] = str(spec.native_size)
    return out


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory; give each its own contiguous storage."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.numel():
            ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if ident in seen:
                t = t.clone()
            seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[k] = t
    return out


def checkpoint_tensors(model: LoadedModel, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The single-file tensors ``save_checkpoint`` writes (markers included)."""
    tensors = diffusers_to_ldm(model.components(), model.spec)
    for marker in arch.MARKER_KEYS:
        tensors.pop(marker, None)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    # A v model whose U-Net passes A1111's SD2 test needs no marker (real SD2-v files have none).
    if model.spec.is_v_prediction and model.spec.prediction_source != "unet-test":
        tensors[arch.V_PRED_MARKER] = torch.tensor([])
    if model.spec.zero_terminal_snr:
        tensors[arch.ZTSNR_MARKER] = torch.tensor([])
    return _unshare(tensors)


def save_checkpoint(model: LoadedModel, path: str | Path, *, metadata: dict[str, str] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a single-file LDM ``.safetensors`` (atomically); returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelFileError("Kiln saves checkpoints as .safetensors only", path=path,
                             hint="name the file <name>.safetensors")
    tensors = checkpoint_tensors(model, dtype)
    meta = {k: v for k, v in model.metadata.items() if not k.startswith("kiln.")}
    meta.update(kiln_metadata(model.spec))
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    meta.setdefault("format", "pt")
    return atomic_save_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
