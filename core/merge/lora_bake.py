"""Bake a LoRA / LyCORIS network into checkpoint tensors at a weight (kohya's merge_lora).

The deltas come from the same ``NetworkManager.apply`` that patches the model at generation
time, so a checkpoint with the LoRA baked in at weight w gives the U-Net and text encoders that
``<lora:name:w>`` gives on the base model (float32 arithmetic, rounded once to the file's dtype).
"""

from __future__ import annotations

import torch

from core.models.architecture import ModelSpec
from core.networks.lora import LoadedNetwork


def bake_network(tensors: dict[str, torch.Tensor], spec: ModelSpec, network: LoadedNetwork,
                 weight: float) -> list[str]:
    """Add ``network``'s deltas times ``weight`` (U-Net and text encoders alike) into ``tensors``
    (single-file keys, changed in place, each keeping its dtype); returns the apply warnings.

    Memory: the model is built from ``tensors`` in float32 (shared where they already are), the
    changed weights are written back, and the model is dropped.
    """
    from core.models.checkpoint import build_loaded_model, checkpoint_tensors
    from core.models.layout import UNET_PREFIX, ldm_to_diffusers
    from core.networks.lora import NetworkManager, NetworkRequest

    model = build_loaded_model(spec, ldm_to_diffusers(tensors, spec), dtype=torch.float32)
    manager = NetworkManager(model.unet, model.text_encoders, spec.family, spec.unet_config)
    report = manager.apply([NetworkRequest(network, weight, weight)])
    manager.forget()  # the patched weights are the result: nothing to restore
    if report.modules_changed == 0:
        from core.errors import ModelFileError

        raise ModelFileError(f"the LoRA changes no layer of this {spec.family.upper()} model", path=network.path,
                             hint="choose a LoRA made for this model family")
    merged = checkpoint_tensors(model)
    del model
    prefixes = (UNET_PREFIX, *spec.text_encoder_prefixes)
    for key in list(tensors):
        # Only U-Net and text-encoder tensors can change; the VAE and the rest stay untouched
        # (bit for bit, under the names the file had).
        if key.startswith(prefixes) and key in merged:
            tensors[key] = merged[key].to(tensors[key].dtype)
    return report.warnings
