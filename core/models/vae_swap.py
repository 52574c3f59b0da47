"""A job's VAE choice without touching the shared model: the external VAE is a module of its own.

The WebUI loads an external VAE's weights into the checkpoint's VAE and has to put the own
weights back later. Kiln builds the external VAE as a separate ``AutoencoderKL`` (cached, one
read of the file) and hands the job a view of the loaded model with that VAE in it; the
checkpoint's own VAE is never written to. Costs one VAE's memory (~160 MB for SD1) while an
external VAE is in use.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path

import torch

from core.models.checkpoint import LoadedModel, assign_weights, empty_vae
from core.models.vae import load_vae_file


class ExternalVAEs:
    """External VAE modules for one loaded model, keyed by file and modification time."""

    def __init__(self, model: LoadedModel, size: int = 1):
        self.model = model
        self.size = size
        self._modules: OrderedDict[tuple[Path, float], torch.nn.Module] = OrderedDict()

    def module(self, path: str | Path) -> torch.nn.Module:
        """The VAE in ``path`` as a module beside the checkpoint's own (ModelFileError if it doesn't fit)."""
        path = Path(path)
        key = (path, path.stat().st_mtime)
        cached = self._modules.get(key)
        if cached is not None:
            self._modules.move_to_end(key)
            return cached
        own = next(self.model.vae.parameters())
        weights = load_vae_file(path, self.model.spec)
        vae = empty_vae(self.model.spec.vae_config)
        assign_weights(vae, weights, what="VAE", path=path, device=own.device, dtype=own.dtype)
        self._modules[key] = vae
        while len(self._modules) > self.size:
            self._modules.popitem(last=False)
        return vae

    def view(self, path: str | Path | None) -> LoadedModel:
        """The loaded model as a job sees it with VAE ``path`` (None: the checkpoint's own)."""
        if path is None:
            return self.model
        return dataclasses.replace(self.model, vae=self.module(path), vae_path=Path(path))
