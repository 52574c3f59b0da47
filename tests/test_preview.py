"""Live previews: small latents decode for real, large ones go through the fitted linear map."""

import numpy as np
import torch
from diffusers import AutoencoderKL

from core.generation.preview import FULL_DECODE_MAX_LATENT_PIXELS, LatentPreviewer


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4).eval()


def test_small_latents_are_decoded_by_the_vae():
    vae = tiny_vae()
    previewer = LatentPreviewer(vae, scaling_factor=0.5, latent_channels=4)
    latent = torch.randn(2, 4, 8, 8)
    image = previewer.to_image(latent)
    with torch.no_grad():
        expected = vae.decode(latent[:1] / 0.5).sample[0]
    arr = ((expected.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    small = np.asarray(image.resize((16, 16), resample=0))  # nearest: undo the nearest upscale exactly
    assert np.abs(small.astype(int) - arr.astype(int)).max() <= 1


def test_large_latents_use_the_linear_map_at_latent_resolution():
    previewer = LatentPreviewer(tiny_vae(), scaling_factor=0.5, latent_channels=4)
    side = int(FULL_DECODE_MAX_LATENT_PIXELS ** 0.5) + 8
    image = previewer.to_image(torch.randn(1, 4, side, side))
    assert previewer._weights is not None and previewer._weights.shape == (5, 3)
    assert image.width % side == 0
