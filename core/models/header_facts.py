"""What a checkpoint file says about itself from its safetensors header alone (no tensor is
read): its native size and whether it is a zero-terminal-SNR model, for the page's defaults
before any model is loaded; and the Rescale CFG such a model starts with."""

from __future__ import annotations

from pathlib import Path

# Native sizes by family, for the UI defaults before a model is loaded.
FAMILY_SIZES = {"sd1": 512, "sd2": 768, "sdxl": 1024}
# Lin et al. 2023 (zero-terminal-SNR paper): the guidance rescale that keeps CFG 7 from burning.
ZTSNR_RESCALE_CFG = 0.7


def rescale_cfg_default(zero_terminal_snr: bool) -> float:
    """The Rescale CFG a model starts with: 0.7 for zero-terminal-SNR models, else 0 (off)."""
    return ZTSNR_RESCALE_CFG if zero_terminal_snr else 0.0


def is_zero_terminal_snr_from_header(path: str | Path) -> bool:
    """Whether a checkpoint carries the empty ``ztsnr`` marker key ComfyUI and Forge read
    (safetensors header only, no tensor load)."""
    from core.models.architecture import ZTSNR_MARKER
    from core.models.state_dict_io import read_safetensors_header

    path = Path(path)
    if path.suffix != ".safetensors":
        return False
    _, header = read_safetensors_header(path)
    return ZTSNR_MARKER in header


def native_size_from_header(path: str | Path) -> int:
    """Guess a checkpoint's native size from its safetensors header alone (no tensor load)."""
    from core.models.state_dict_io import read_safetensors_header

    path = Path(path)
    if path.suffix != ".safetensors":
        return 512
    _, header = read_safetensors_header(path)
    meta = header.get("__metadata__", {}) or {}
    if "kiln.native_size" in meta:
        return int(meta["kiln.native_size"])
    keys = header.keys()
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return FAMILY_SIZES["sdxl"]
    if any(k.startswith("cond_stage_model.model.") for k in keys) and "v_pred" in keys:
        return FAMILY_SIZES["sd2"]
    return FAMILY_SIZES["sd1"]
