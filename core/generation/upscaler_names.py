"""The WebUI's upscaler names and the files they stand for, in the WebUI's model folders.

The WebUI offers some upscalers by a fixed name whatever is on disk (it downloads the file on
first use): "R-ESRGAN 4x+" is models/RealESRGAN/RealESRGAN_x4plus.pth, "SwinIR 4x" is
models/SwinIR/SwinIR_4x.pth, and so on (modules/realesrgan_model.py, esrgan_model.py,
swinir_model.py, scunet_model.py, dat_model.py, ldsr_model.py). Kiln never downloads: a name
whose file is present resolves to it, and an absent one gets a message saying which file to put
where, so a pasted infotext naming it is explained instead of "unknown upscaler".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Architectures Kiln reads itself (core.generation.upscalers_model); the others need spandrel.
KILN_ARCHS = frozenset({"RRDBNet", "SRVGGNetCompact"})


@dataclass(frozen=True)
class NamedUpscaler:
    """One of the WebUI's fixed upscaler names: the file it loads and where the WebUI keeps it."""

    name: str  # as the WebUI's menus, the API and infotexts write it
    folder: str  # below the data folder, as the WebUI's models_path
    file: str  # the file name the WebUI downloads it under
    scale: int
    arch: str  # the network; KILN_ARCHS load without spandrel
    source: str  # where the WebUI downloads it from (for the user to fetch it by hand)


_REAL = "https://github.com/xinntao/Real-ESRGAN/releases/download/"
# The WebUI's lists, in its order (get_realesrgan_models, then the other upscaler modules).
NAMED_UPSCALERS: tuple[NamedUpscaler, ...] = (
    NamedUpscaler("R-ESRGAN General 4xV3", "models/RealESRGAN", "realesr-general-x4v3.pth", 4, "SRVGGNetCompact",
                  _REAL + "v0.2.5.0/realesr-general-x4v3.pth"),
    NamedUpscaler("R-ESRGAN General WDN 4xV3", "models/RealESRGAN", "realesr-general-wdn-x4v3.pth", 4,
                  "SRVGGNetCompact", _REAL + "v0.2.5.0/realesr-general-wdn-x4v3.pth"),
    NamedUpscaler("R-ESRGAN AnimeVideo", "models/RealESRGAN", "realesr-animevideov3.pth", 4, "SRVGGNetCompact",
                  _REAL + "v0.2.5.0/realesr-animevideov3.pth"),
    NamedUpscaler("R-ESRGAN 4x+", "models/RealESRGAN", "RealESRGAN_x4plus.pth", 4, "RRDBNet",
                  _REAL + "v0.1.0/RealESRGAN_x4plus.pth"),
    NamedUpscaler("R-ESRGAN 4x+ Anime6B", "models/RealESRGAN", "RealESRGAN_x4plus_anime_6B.pth", 4, "RRDBNet",
                  _REAL + "v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth"),
    NamedUpscaler("R-ESRGAN 2x+", "models/RealESRGAN", "RealESRGAN_x2plus.pth", 2, "RRDBNet",
                  _REAL + "v0.2.1/RealESRGAN_x2plus.pth"),
    NamedUpscaler("ESRGAN_4x", "models/ESRGAN", "ESRGAN_4x.pth", 4, "RRDBNet",
                  "https://github.com/cszn/KAIR/releases/download/v1.0/ESRGAN.pth"),
    NamedUpscaler("SwinIR 4x", "models/SwinIR", "SwinIR_4x.pth", 4, "SwinIR",
                  "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"
                  "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth"),
    NamedUpscaler("ScuNET GAN", "models/ScuNET", "scunet_color_real_gan.pth", 1, "SCUNet",
                  "https://github.com/cszn/KAIR/releases/download/v1.0/scunet_color_real_gan.pth"),
    NamedUpscaler("ScuNET PSNR", "models/ScuNET", "scunet_color_real_psnr.pth", 1, "SCUNet",
                  "https://github.com/cszn/KAIR/releases/download/v1.0/scunet_color_real_psnr.pth"),
    NamedUpscaler("DAT x2", "models/DAT", "DAT_x2.pth", 2, "DAT",
                  "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x2.pth"),
    NamedUpscaler("DAT x3", "models/DAT", "DAT_x3.pth", 3, "DAT",
                  "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x3.pth"),
    NamedUpscaler("DAT x4", "models/DAT", "DAT_x4.pth", 4, "DAT",
                  "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x4.pth"),
    NamedUpscaler("LDSR", "models/LDSR", "model.ckpt", 4, "LDSR",
                  "https://heibox.uni-heidelberg.de/f/578df07c8fc04ffbadf3/?dl=1"),
)
NAMED_BY_NAME = {u.name: u for u in NAMED_UPSCALERS}
# Folders whose other files the WebUI lists by file stem too (its "local models").
STEM_FOLDERS = ("models/ESRGAN", "models/SwinIR", "models/ScuNET", "models/DAT", "models/HAT")
REALESRGAN_FOLDER = "models/RealESRGAN"


def named_path(data_dir: Path, named: NamedUpscaler, esrgan_dir: Path | None = None) -> Path:
    """Where the file of a WebUI-named upscaler is looked for (``--esrgan-models-path`` moves ESRGAN)."""
    if named.folder == "models/ESRGAN" and esrgan_dir is not None:
        return esrgan_dir / named.file
    return data_dir / named.folder / named.file


def absent_message(named: NamedUpscaler, where: Path) -> str:
    """Why a WebUI upscaler name cannot be used yet, and what to do: the file and the folder."""
    if named.arch == "LDSR":
        return (f"{named.name} is a latent diffusion upscaler, which Kiln does not run; "
                "choose another upscaler (R-ESRGAN 4x+, ESRGAN_4x, ...)")
    return (f"{named.name} needs {named.file} in {where.parent} (Kiln downloads nothing: "
            f"get it from {named.source} and save it under that name)")
