"""Checkpoints kept loaded after a switch: the WebUI's ``sd_checkpoints_limit``.

With a limit above 1, switching away from a checkpoint keeps it (its LoRA merges undone first,
so it is the file's own weights) in system RAM instead of dropping it; switching back takes it
from here in well under a second instead of reading gigabytes again. The oldest kept model goes
first when the limit is reached. A file that changed on disk since it was kept is read again,
never served stale.

One cache per worker (each worker holds its own models on its own device). The engine owns it:
nothing here is global.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.fileio import file_stamp

if TYPE_CHECKING:  # torch loads with the first model, not with the engine (the page serves first)
    import torch

log = logging.getLogger(__name__)


@dataclass
class KeptModel:
    """A loaded checkpoint with the helpers built for it, as the worker's slot held them."""

    entry: Any  # core.models.registry.ModelEntry
    model: Any  # core.models.checkpoint.LoadedModel
    extras: Any  # core.generation.extras.ExtraNetworks (its LoRAs restored)
    vaes: Any  # core.models.vae_swap.ExternalVAEs
    autocast: bool
    load_warnings: list[str]
    stamp: tuple[int, int] | None  # the file's (mtime, size) when it was loaded
    parked: bool = False  # moved from the GPU to system RAM while kept


def _parts(model: Any) -> list[torch.nn.Module]:
    return [*model.text_encoders, model.unet, model.vae]


def _on_gpu(model: Any) -> bool:
    # Offloaded models (--medvram / --lowvram) live in system RAM between uses already.
    return any(p.device.type == "cuda" for p in model.unet.parameters())


class CheckpointCache:
    """Most recent last; ``keep`` models at most (the limit minus the one in use)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[Path, KeptModel] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def paths(self) -> list[Path]:
        return list(self._kept)

    def put(self, kept: KeptModel, keep: int) -> list[KeptModel]:
        """Keep ``kept`` (moved to system RAM if it was on a GPU); returns the models dropped to stay
        within ``keep``."""
        if keep < 1:
            return [kept, *self.clear()]
        if _on_gpu(kept.model):
            for part in _parts(kept.model):
                part.to("cpu")
            kept.parked = True
        path = Path(kept.entry.path)
        self._kept.pop(path, None)
        self._kept[path] = kept
        dropped = []
        while len(self._kept) > keep:
            dropped.append(self._kept.popitem(last=False)[1])
        return dropped

    def take(self, entry: Any) -> KeptModel | None:
        """The kept model of ``entry``'s file, out of the cache (still in system RAM: ``resume``
        moves it back once the model in use is put away), or None: not kept, or the file changed
        since (then it is dropped)."""
        kept = self._kept.pop(Path(entry.path), None)
        if kept is None:
            return None
        if kept.stamp is None or kept.stamp != file_stamp(Path(entry.path)):
            log.info("%s changed on disk since it was kept: reading it again", entry.path)
            return None
        return kept

    @staticmethod
    def resume(kept: KeptModel) -> KeptModel:
        """Move a taken model back to the device it ran on."""
        if kept.parked:
            import torch

            device = torch.device(kept.model.device)
            for part in _parts(kept.model):
                part.to(device)
            kept.parked = False
        return kept

    def clear(self) -> list[KeptModel]:
        dropped = list(self._kept.values())
        self._kept.clear()
        return dropped
