"""What the generation path does with a LoadedModel: run the U-Net, decode and encode latents.

Kept apart from the loader so the loader stays a pure file → modules step, and img2img,
training previews and the XYZ plot reuse the same few operations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.models.checkpoint import LoadedModel


def latent_channels(model: LoadedModel) -> int:
    return int(model.spec.vae_config.get("latent_channels", 4))


def vae_downscale(model: LoadedModel) -> int:
    """Pixels per latent pixel: 8 for SD's VAE, 4 for a 3-level VAE like the Shapes model's."""
    return 2 ** (len(model.spec.vae_config["block_out_channels"]) - 1)


def sdxl_time_ids(width: int, height: int, device, dtype) -> torch.Tensor:
    """SDXL's size/crop conditioning: (orig h, orig w, crop top, crop left, target h, target w)."""
    return torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)


def model_device(model: LoadedModel) -> torch.device:
    return next(model.unet.parameters()).device


def is_inpainting(model: LoadedModel) -> bool:
    """An inpainting checkpoint (sd-v1-5-inpainting layout): 9 U-Net input channels, 4 latent ones."""
    return int(model.spec.unet_config.get("in_channels", 4)) == latent_channels(model) + 5


def unet_fn(model: LoadedModel, size: tuple[int, int] | None = None, *, autocast: bool = False
            ) -> Callable[..., torch.Tensor]:
    """``fn(x, t, context, pooled=None) -> raw prediction`` in float32, whatever the U-Net's dtype."""
    unet = model.unet
    param = next(unet.parameters())
    dtype, device = param.dtype, param.device
    time_ids = None
    if model.spec.family == "sdxl":
        width, height = size or (model.spec.native_size, model.spec.native_size)
        time_ids = sdxl_time_ids(width, height, device, dtype)

    def fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor | None = None,
           c_concat: torch.Tensor | None = None, **_: torch.Tensor) -> torch.Tensor:
        if c_concat is not None:  # an inpainting checkpoint: mask + masked-image latents beside x
            x = torch.cat([x, c_concat.to(x)], dim=1)
        added = None
        if time_ids is not None:
            added = {"text_embeds": pooled.to(device, dtype), "time_ids": time_ids.expand(x.shape[0], -1)}
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            out = unet(x.to(device, dtype), t.to(device), encoder_hidden_states=context.to(device, dtype),
                       added_cond_kwargs=added, return_dict=False)[0]
        return out.float()

    return fn


# no_grad rather than inference_mode: latents made here may feed a training step later
# (a latent cache), and inference tensors cannot be saved for backward.
@torch.no_grad()
def decode(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Latents → images in [0, 1], NCHW float32 (fp32 retry when fp16 decoding gives NaNs)."""
    from core.models.vae import decode_latents

    return decode_latents(model.vae, latents, model.spec.vae_scaling_factor, upcast_on_nan=True).float()


@torch.no_grad()
def encode(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] NCHW → scaled latents (the distribution's mode: deterministic)."""
    vae = model.vae
    param = next(vae.parameters())
    dist = vae.encode((images * 2 - 1).to(param.device, param.dtype)).latent_dist
    return dist.mode().float() * model.spec.vae_scaling_factor
