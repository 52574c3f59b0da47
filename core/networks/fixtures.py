"""Tiny network files in every format Kiln reads, shaped for a given (tiny) model.

``write_network_fixtures`` writes, under ``out_dir``, the folders the WebUI uses
(``models/Lora``, ``embeddings``, ``models/hypernetworks``) with one small file per format:
kohya LoRA (real ``ss_*`` metadata), LoCon, LoHa, LoKr, IA3, full diff, DoRA, a PEFT/diffusers
LoRA, textual inversions (``.pt``, ``.safetensors``, ``.bin``, PNG, SDXL ``clip_l``/``clip_g``) and
a hypernetwork. Values are seeded, so the files are the same on every run. kohya's names and
its ``ss_*`` writer are core.networks.kohya's, as the trainer's.
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.fileio import atomic_save_with, atomic_write_bytes
from core.networks import kohya


def _io(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return w.shape[0], w.shape[1]


# --- writers ----------------------------------------------------------------------------------

def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_save_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _save_torch(path: Path, obj) -> Path:
    return atomic_save_with(path, lambda tmp: torch.save(obj, tmp))


def kohya_metadata(output_name: str, family: str, dim: int, alpha: float, module: str = "networks.lora",
                   network_args: dict | None = None) -> dict[str, str]:
    """A realistic subset of the ``ss_*`` metadata kohya's train_network.py writes (all strings)."""
    return kohya.training_metadata(
        output_name=output_name, family=family, network_dim=dim, network_alpha=alpha, network_module=module,
        network_args=network_args, session_id=1234567890, training_started_at=1700000000.0,
        learning_rate=0.0001, text_encoder_lr=5e-05, unet_lr=0.0001, num_train_images=40, num_reg_images=0,
        num_batches_per_epoch=20, num_epochs=2, batch_size_per_device=2, total_batch_size=2, resolution=(512, 512),
        clip_skip=2, max_token_length=None, optimizer="torch.optim.adamw.AdamW", lr_scheduler="cosine",
        lr_warmup_steps=0, network_dropout=None, mixed_precision="fp16", full_fp16=False, seed=42,
        sd_model_name="kiln-tiny.safetensors", training_comment=None, steps=40, epoch=2,
        training_finished_at=1700000100.0, enable_bucket=True, min_bucket_reso=256, max_bucket_reso=1024,
        keep_tokens=1, shuffle_caption=True, flip_aug=False, color_aug=False, cache_latents=True,
        caption_dropout_rate=0.0, noise_offset=None,
        dataset_dirs={"10_sls 1girl": {"n_repeats": 10, "img_count": 4}}, reg_dataset_dirs={},
        tag_frequency={"10_sls 1girl": {"sls": 4, "1girl": 4, "solo": 3, "red hair": 2}},
        bucket_info={"buckets": {"0": {"resolution": [512, 512], "count": 40}}, "mean_img_ar_error": 0.0},
    )


class NetworkFileWriter:
    def __init__(self, family: str, unet: nn.Module, text_encoders: list[nn.Module], unet_config: dict | None,
                 seed: int):
        self.family = family
        self.unet = unet
        self.text_encoders = text_encoders
        self.gen = torch.Generator().manual_seed(seed)
        self.unet_names = kohya.unet_names(unet, family, unet_config)
        self.te_prefixes = kohya.te_prefixes(family, len(text_encoders))

    def randn(self, *shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen) * scale

    def kohya_name(self, component: int, name: str) -> str:
        if component == 0:
            return self.unet_names[name]
        return kohya.te_name(self.te_prefixes[component - 1], name)

    def targets(self, limit_per_component: int | None = None) -> list[tuple[int, str, nn.Module]]:
        chosen = kohya.target_modules(self.unet, self.text_encoders)
        if limit_per_component is None:
            return chosen
        counts: dict[int, int] = {}
        out = []
        for c, n, m in chosen:
            if counts.get(c, 0) < limit_per_component:
                out.append((c, n, m))
                counts[c] = counts.get(c, 0) + 1
        return out

    def kohya_lora(self, rank: int, alpha: float) -> dict[str, torch.Tensor]:
        sd = {}
        for c, name, module in self.targets():
            out_f, in_f = _io(module)
            key = self.kohya_name(c, name)
            if isinstance(module, nn.Conv2d):
                sd[f"{key}.{kohya.LORA_DOWN}"] = self.randn(rank, in_f, 1, 1)
                sd[f"{key}.{kohya.LORA_UP}"] = self.randn(out_f, rank, 1, 1)
            else:
                sd[f"{key}.{kohya.LORA_DOWN}"] = self.randn(rank, in_f)
                sd[f"{key}.{kohya.LORA_UP}"] = self.randn(out_f, rank)
            sd[f"{key}.{kohya.ALPHA}"] = torch.tensor(float(alpha))
        return sd

    def locon(self, rank: int, alpha: float) -> dict[str, torch.Tensor]:
        sd = self.kohya_lora(rank, alpha)
        for name, module in self.unet.named_modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and ".resnets." in name:
                out_c, in_c = module.weight.shape[:2]
                key = self.unet_names[name]
                sd[f"{key}.lora_down.weight"] = self.randn(rank, in_c, 3, 3)
                sd[f"{key}.lora_up.weight"] = self.randn(out_c, rank, 1, 1)
                sd[f"{key}.alpha"] = torch.tensor(float(alpha))
        return sd

    def loha(self, rank: int, alpha: float) -> dict[str, torch.Tensor]:
        sd = {}
        for c, name, module in self.targets(limit_per_component=4):
            out_f, in_f = _io(module)
            in_f = module.weight[0].numel()
            key = self.kohya_name(c, name)
            for i in (1, 2):
                sd[f"{key}.hada_w{i}_a"] = self.randn(out_f, rank, scale=0.3)
                sd[f"{key}.hada_w{i}_b"] = self.randn(rank, in_f, scale=0.3)
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
        return sd

    def lokr(self, alpha: float) -> dict[str, torch.Tensor]:
        """Alternates full factors (scale 1) and a factorized w2 (scale alpha/rank)."""
        sd = {}
        for i, (c, name, module) in enumerate(self.targets(limit_per_component=4)):
            out_f, in_f = _io(module)
            in_f = module.weight[0].numel()
            key = self.kohya_name(c, name)
            a = 2 if out_f % 2 == 0 else 1
            b = 2 if in_f % 2 == 0 else 1
            sd[f"{key}.lokr_w1"] = self.randn(a, b, scale=0.5)
            if i % 2 == 0:
                sd[f"{key}.lokr_w2"] = self.randn(out_f // a, in_f // b)
            else:
                sd[f"{key}.lokr_w2_a"] = self.randn(out_f // a, 2, scale=0.3)
                sd[f"{key}.lokr_w2_b"] = self.randn(2, in_f // b, scale=0.3)
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
        return sd

    def ia3(self) -> dict[str, torch.Tensor]:
        sd = {}
        for i, (c, name, module) in enumerate(self.targets(limit_per_component=4)):
            out_f, in_f = _io(module)
            key = self.kohya_name(c, name)
            on_input = i % 2 == 1
            sd[f"{key}.weight"] = self.randn(in_f if on_input else out_f)
            sd[f"{key}.on_input"] = torch.tensor(on_input)
        return sd

    def full(self) -> dict[str, torch.Tensor]:
        sd = {}
        for c, name, module in self.targets(limit_per_component=3):
            key = self.kohya_name(c, name)
            sd[f"{key}.diff"] = self.randn(*module.weight.shape, scale=0.01)
            if getattr(module, "bias", None) is not None:
                sd[f"{key}.diff_b"] = self.randn(module.weight.shape[0], scale=0.01)
        return sd

    def dora(self, rank: int, alpha: float) -> dict[str, torch.Tensor]:
        """LoRA plus ``dora_scale`` [1, in] (the WebUI/kohya layout): the magnitude per input column."""
        sd = {}
        for c, name, module in self.targets(limit_per_component=4):
            out_f, in_f = _io(module)
            key = self.kohya_name(c, name)
            w = module.weight.detach().float().reshape(out_f, in_f)
            sd[f"{key}.lora_down.weight"] = self.randn(rank, in_f).reshape(rank, in_f, *module.weight.shape[2:])
            sd[f"{key}.lora_up.weight"] = self.randn(out_f, rank).reshape(out_f, rank, *([1] * (module.weight.dim() - 2)))
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
            sd[f"{key}.dora_scale"] = (w.norm(dim=0, keepdim=True) * 1.1).reshape(1, in_f, *([1] * (module.weight.dim() - 2)))
        return sd

    def peft(self, rank: int) -> dict[str, torch.Tensor]:
        """diffusers ``save_lora_weights`` layout: ``unet.<path>.lora_A.weight`` / ``text_encoder.<4.x path>``."""
        sd = {}
        prefixes = ["unet.", "text_encoder.", "text_encoder_2."]
        for c, name, module in self.targets(limit_per_component=6):
            out_f, in_f = _io(module)
            path = name if c == 0 else ("text_model." + name if not name.startswith("text_model.") else name)
            key = prefixes[c] + path
            if isinstance(module, nn.Conv2d):
                sd[f"{key}.lora_A.weight"] = self.randn(rank, in_f, 1, 1)
                sd[f"{key}.lora_B.weight"] = self.randn(out_f, rank, 1, 1)
            else:
                sd[f"{key}.lora_A.weight"] = self.randn(rank, in_f)
                sd[f"{key}.lora_B.weight"] = self.randn(out_f, rank)
        return sd


def ti_vectors(text_encoders: list[nn.Module], n_vectors: int, seed: int) -> dict[str, torch.Tensor]:
    """Random TI vectors as widths of the given encoders: {"default"} or {"clip_l", "clip_g"}."""
    gen = torch.Generator().manual_seed(seed)
    widths = [te.config.hidden_size for te in text_encoders]
    if len(widths) == 2:
        return {"clip_l": torch.randn(n_vectors, widths[0], generator=gen) * 0.02,
                "clip_g": torch.randn(n_vectors, widths[1], generator=gen) * 0.02}
    return {"default": torch.randn(n_vectors, widths[0], generator=gen) * 0.02}


def write_ti_pt(path: Path, name: str, vec: torch.Tensor, step: int = 100) -> Path:
    """The WebUI's ``Embedding.save`` layout."""
    return _save_torch(path, {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": name,
                              "step": step, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "kiln-tiny"})


def embedding_to_b64(data: dict) -> bytes:
    """The WebUI's ``sd-ti-embedding`` text: base64 of JSON with ``{"TORCHTENSOR": [...]}`` tensors."""
    def encode(obj):
        if isinstance(obj, torch.Tensor):
            return {"TORCHTENSOR": obj.detach().cpu().numpy().tolist()}
        raise TypeError(type(obj).__name__)
    return base64.b64encode(json.dumps(data, default=encode).encode())


def write_ti_png(path: Path, name: str, vec: torch.Tensor, pixel_encoded: bool = False) -> Path:
    """A TI embedding in a PNG: the ``sd-ti-embedding`` text chunk, or the pixel-encoded strips."""
    from io import BytesIO

    from PIL import Image, PngImagePlugin

    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": name, "step": 10}
    cover = Image.new("RGB", (32, 32), (200, 120, 40))
    buf = BytesIO()
    if pixel_encoded:
        image_with_embedding(cover, data).save(buf, format="PNG")
    else:
        info = PngImagePlugin.PngInfo()
        info.add_text("sd-ti-embedding", embedding_to_b64(data).decode())
        cover.save(buf, format="PNG", pnginfo=info)
    return atomic_write_bytes(path, buf.getvalue())


def image_with_embedding(image, data: dict):
    """The WebUI's pixel encoding: zlib(JSON) nibbles in strips left and right of the image."""
    from PIL import Image

    from core.networks.embeddings import xor_block

    def encode(obj):
        if isinstance(obj, torch.Tensor):
            return {"TORCHTENSOR": obj.detach().cpu().numpy().tolist()}
        raise TypeError(type(obj).__name__)

    packed = np.frombuffer(zlib.compress(json.dumps(data, default=encode).encode(), level=9), np.uint8).copy()
    h, d = image.size[1], 3
    size = packed.shape[0] + (h - packed.shape[0] % h)
    size = size + (h * d - size % (h * d))
    low = xor_block(np.resize(packed & 0x0F, size).reshape((h, -1, d)))
    high = xor_block(np.resize(packed >> 4, size).reshape((h, -1, d)))
    # The WebUI draws a decorative dot pattern into the high nibbles; a constant 0x10 keeps
    # every data pixel non-black, which is all the decoder needs to find the strips.
    low = low | 0x10
    high = high | 0x10
    im_low, im_high = Image.fromarray(low, mode="RGB"), Image.fromarray(high, mode="RGB")
    out = Image.new("RGB", (image.size[0] + im_low.size[0] + im_high.size[0] + 2, h), (0, 0, 0))
    out.paste(im_low, (0, 0))
    out.paste(image, (im_low.size[0] + 1, 0))
    out.paste(im_high, (im_low.size[0] + 1 + image.size[0] + 1, 0))
    return out


def hypernetwork_state(context_dims: list[int], layer_structure=(1, 2, 1), activation: str = "relu",
                       layer_norm: bool = False, use_dropout: bool = False, seed: int = 0,
                       name: str = "kiln-hypernet") -> dict:
    """A WebUI hypernetwork ``.pt`` dict: int keys = context widths → (K state dict, V state dict)."""
    from core.networks.hypernetworks import build_mlp, dropout_structure_for

    gen = torch.Generator().manual_seed(seed)
    dropout = dropout_structure_for(list(layer_structure), use_dropout, last_layer_dropout=False)
    state: dict = {}
    for dim in context_dims:
        pair = []
        for _ in range(2):
            mlp = build_mlp(dim, list(layer_structure), activation, layer_norm, activate_output=False,
                            dropout_structure=dropout)
            with torch.no_grad():
                for p in mlp.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            pair.append({f"linear.{k}": v for k, v in mlp.state_dict().items()})
        state[dim] = tuple(pair)
    state.update({"step": 100, "name": name, "layer_structure": list(layer_structure), "activation_func": activation,
                  "is_layer_norm": layer_norm, "weight_initialization": "Normal", "use_dropout": use_dropout,
                  "dropout_structure": dropout, "last_layer_dropout": False, "activate_output": False,
                  "sd_checkpoint": "0123456789", "sd_checkpoint_name": "kiln-tiny", "optional_info": None})
    return state


def unet_context_dims(unet: nn.Module) -> list[int]:
    """Widths of every attention context in the U-Net: the channels (self-attention) and the text width."""
    dims = set()
    for module in unet.modules():
        if hasattr(module, "to_k") and hasattr(module, "to_q"):
            dims.add(module.to_k.in_features)
    return sorted(dims)


def write_network_fixtures(out_dir: Path, family: str, unet: nn.Module, text_encoders: list[nn.Module],
                           unet_config: dict | None = None, seed: int = 0) -> dict[str, Path]:
    """Write one small file per format for this model; returns {format name: path}."""
    out_dir = Path(out_dir)
    lora_dir, emb_dir, hn_dir = out_dir / "models" / "Lora", out_dir / "embeddings", out_dir / "models" / "hypernetworks"
    w = NetworkFileWriter(family, unet, text_encoders, unet_config, seed)
    files: dict[str, Path] = {}

    files["kohya"] = kohya.save_lora(lora_dir / "kiln_style_v1.safetensors", w.kohya_lora(rank=4, alpha=2.0),
                                     kohya_metadata("kiln_style", family, 4, 2.0))
    files["locon"] = save_safetensors(lora_dir / "kiln_locon.safetensors", w.locon(4, 4.0),
                                       kohya_metadata("kiln_locon", family, 4, 4.0, "lycoris.kohya",
                                                      {"algo": "locon", "conv_dim": "4", "conv_alpha": "4"}))
    files["loha"] = save_safetensors(lora_dir / "kiln_loha.safetensors", w.loha(2, 1.0))
    files["lokr"] = save_safetensors(lora_dir / "kiln_lokr.safetensors", w.lokr(1.0))
    files["ia3"] = save_safetensors(lora_dir / "kiln_ia3.safetensors", w.ia3())
    files["full"] = save_safetensors(lora_dir / "kiln_full.safetensors", w.full())
    files["dora"] = save_safetensors(lora_dir / "kiln_dora.safetensors", w.dora(4, 4.0))
    files["peft"] = save_safetensors(lora_dir / "kiln_peft.safetensors", w.peft(4))

    vecs = ti_vectors(text_encoders, 2, seed + 1)
    if family == "sdxl":
        files["ti_sdxl"] = save_safetensors(emb_dir / "kiln_xl_token.safetensors", vecs)
    else:
        vec = vecs["default"]
        files["ti_pt"] = write_ti_pt(emb_dir / "kiln_token.pt", "kiln_token", vec)
        files["ti_safetensors"] = save_safetensors(emb_dir / "kiln_token_st.safetensors", {"emb_params": vec})
        files["ti_bin"] = _save_torch(emb_dir / "concepts" / "kiln_concept.bin", {"<kiln-concept>": vec[0]})
        files["ti_png"] = write_ti_png(emb_dir / "kiln_png.png", "kiln_png", vec)
        files["ti_png_pixels"] = write_ti_png(emb_dir / "kiln_pixels.png", "kiln_pixels", vec, pixel_encoded=True)

    files["hypernetwork"] = _save_torch(hn_dir / "kiln_hypernet.pt",
                                        hypernetwork_state(unet_context_dims(unet), seed=seed + 2))
    return files
