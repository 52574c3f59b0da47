"""Where a loaded model's parts live: the WebUI's --medvram / --lowvram, and xformers.

--medvram keeps each big part (text encoders, U-Net, VAE) in system RAM and moves it to
the GPU only while it runs (model-level offload); --lowvram does the same per layer
(sequential offload: slowest, smallest). Both come from accelerate's hooks, so the
model code stays unaware of them.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def place_model(model, policy) -> list[str]:
    """Move ``model`` (a LoadedModel) per the device policy; returns warnings for the user."""
    warnings: list[str] = []
    device = torch.device(policy.device_for("sd") if hasattr(policy, "device_for") else policy.device)
    vae_dtype = policy.torch_vae_dtype()
    if next(model.vae.parameters()).dtype != vae_dtype:
        torch.nn.Module.to(model.vae, dtype=vae_dtype)  # plain cast: --no-half-vae means all of it
    if policy.attention == "xformers":
        try:
            model.unet.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # xformers missing or built for another torch: fall back, say so
            warnings.append(f"xformers could not be enabled ({exc}); using PyTorch SDPA attention")
    offload = getattr(policy, "offload", "none")
    if offload == "none" or device.type != "cuda":
        if offload != "none":
            warnings.append(f"--{offload} has no effect on {device.type}; the model stays in memory")
        return warnings
    parts = [*model.text_encoders, model.unet, model.vae]
    for part in parts:
        part.to("cpu")
    if offload == "medvram":
        from accelerate import cpu_offload_with_hook

        hook = None
        for part in parts:
            _, hook = cpu_offload_with_hook(part, device, prev_module_hook=hook)
    else:
        from accelerate import cpu_offload

        for part in parts:
            cpu_offload(part, device)
    log.info("model offloaded to system RAM (%s)", offload)
    return warnings
