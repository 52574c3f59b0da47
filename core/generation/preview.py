"""Cheap live previews: a per-VAE linear map from latent channels to RGB.

The WebUI hard-codes "Approx cheap" coefficients for SD1 and SDXL latents. Kiln fits them
instead (least squares on a few decoded random latents, once per loaded VAE), so the same
code previews SD1, SDXL and Kiln's own small models alike at ~zero cost per step.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Small latents (Kiln's built-in 64×64 model: 16×16) decode fully in milliseconds, and a linear
# map can't follow a small VAE's colours well: decode those for real.
FULL_DECODE_MAX_LATENT_PIXELS = 32 * 32


class LatentPreviewer:
    def __init__(self, vae, scaling_factor: float, latent_channels: int, seed: int = 0, *, full: bool = False):
        """``full``: decode every preview with the VAE (the WebUI's "Full" preview method);
        else the fitted linear map ("Approx cheap") for latents above FULL_DECODE_MAX_LATENT_PIXELS."""
        self.full = full
        self.vae = vae
        self.scaling_factor = scaling_factor
        self.latent_channels = latent_channels
        self.seed = seed
        self._weights: torch.Tensor | None = None  # [C+1, 3]

    @torch.no_grad()
    def _full_decode(self, latent: torch.Tensor) -> Image.Image:
        param = next(self.vae.parameters())
        decoded = self.vae.decode(latent.to(param.device, param.dtype) / self.scaling_factor).sample[0].float()
        arr = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        img = Image.fromarray(np.ascontiguousarray(arr))
        scale = max(1, 256 // max(img.size))
        return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)

    @torch.no_grad()
    def _fit(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        latents = torch.randn(4, self.latent_channels, 8, 8, generator=g)
        param = next(self.vae.parameters())
        decoded = self.vae.decode(latents.to(param.device, param.dtype) / self.scaling_factor).sample.float().cpu()
        # Pool the decoded image back to latent resolution so each latent pixel maps to one colour.
        pooled = torch.nn.functional.adaptive_avg_pool2d(decoded, latents.shape[-2:])
        x = torch.cat([latents, torch.ones_like(latents[:, :1])], dim=1).permute(0, 2, 3, 1).reshape(-1, self.latent_channels + 1)
        y = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
        return torch.linalg.lstsq(x, y).solution

    @torch.no_grad()
    def to_image(self, latent: torch.Tensor) -> Image.Image:
        """First image of a latent batch → small RGB preview."""
        if self.full or latent.shape[-1] * latent.shape[-2] <= FULL_DECODE_MAX_LATENT_PIXELS:
            return self._full_decode(latent[:1])
        if self._weights is None:
            self._weights = self._fit()
        z = latent[0].float().cpu()
        z = torch.cat([z, torch.ones_like(z[:1])], dim=0).permute(1, 2, 0)
        rgb = (z @ self._weights).clamp(-1, 1)
        arr = ((rgb + 1) * 127.5).round().to(torch.uint8).numpy()
        img = Image.fromarray(np.ascontiguousarray(arr))
        scale = max(1, 256 // max(img.size))
        return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
