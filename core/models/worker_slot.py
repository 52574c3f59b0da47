"""What one queue worker holds on its device (``--device-id 0,1``: one each): the loaded
checkpoint, the helpers built with it, and the checkpoints kept after a switch. The Engine owns
the slots; only the worker of the same index uses one."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from core.models.model_cache import CheckpointCache

if TYPE_CHECKING:
    from core.models.checkpoint import LoadedModel
    from core.models.registry import ModelEntry


class DeviceModels:
    """What one worker holds on its device: the loaded checkpoint and the helpers built with it."""

    def __init__(self, index: int, device_id: int | None):
        self.index = index
        self.device_id = device_id  # CUDA index, None = the default device (CPU, MPS, cuda:0)
        self.lock = threading.RLock()
        self.model: LoadedModel | None = None
        self.entry: ModelEntry | None = None
        self.extras: Any = None  # core.generation.extras.ExtraNetworks, built with the model
        self.vaes: Any = None  # core.models.vae_swap.ExternalVAEs, built with the model
        self.upscalers: Any = None
        self.autocast = False  # --precision autocast on a GPU: the U-Net runs under torch.autocast
        self.load_warnings: list[str] = []  # shown with the next result (xformers missing, ...)
        self.kept = CheckpointCache()  # checkpoints switched away from (sd_checkpoints_limit > 1)
        self.stamp: tuple[int, int] | None = None  # the loaded file's (mtime, size) when read
