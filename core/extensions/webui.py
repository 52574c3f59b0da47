"""WebUI extensions found in extensions/: why they are not run, and what Kiln has built in instead.

A WebUI extension imports ``modules.*`` (``modules.scripts``, ``modules.shared``...), the
WebUI's own internals, which Kiln does not have; running one unchanged would fail on its first
import, so Kiln does not try. The folder is listed (the page, GET /sdapi/v1/extensions) with the
built-in feature that replaces it when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# What a WebUI extension's folder holds (its loader reads these); Kiln's entry point is not one.
WEBUI_MARKERS = ("scripts", "install.py", "preload.py", "javascript", "metadata.ini")
WEBUI_REASON = "a WebUI extension (it imports modules.*, the WebUI's internals): Kiln cannot run it"


@dataclass(frozen=True)
class Replacement:
    """A popular WebUI extension and the Kiln feature that does its work."""

    title: str
    folders: tuple[str, ...]  # the folder names its install gives (git clone names), lower case
    builtin: str


REPLACEMENTS: tuple[Replacement, ...] = (
    Replacement("WD14 tagger", ("stable-diffusion-webui-wd14-tagger", "sd-webui-wd14-tagger"),
                "Dataset › Tag (WD14, DeepBooru, BLIP) and the /tagger/v1 API"),
    Replacement("Dataset Tag Editor", ("stable-diffusion-webui-dataset-tag-editor",),
                "Dataset › Tag editor"),
    Replacement("Additional Networks", ("sd-webui-additional-networks",),
                "the Extra networks panel, its Additional Networks rows and <lora:…> tags"),
    Replacement("LyCORIS", ("a1111-sd-webui-lycoris", "a1111-sd-webui-locon"),
                "LoRA loading (LoCon, LoHa, LoKr, (IA)³, DoRA read from the LoRA folder)"),
    Replacement("Dreambooth", ("sd_dreambooth_extension",),
                "Train › LoRA on kohya-style folders (no full fine-tune)"),
    Replacement("Kohya sd-scripts GUI trainers", ("sd-webui-train-tools", "kohya-sd-scripts-webui"),
                "Train › LoRA (kohya's dataset config, metadata and file format)"),
    Replacement("X/Y/Z plot add-ons", ("sd-webui-xyz-addon", "xyz_grid", "sd-webui-xyz-plot-extended"),
                "the X/Y/Z plot script (the WebUI's axes, Kiln's and extensions' axes)"),
    Replacement("SuperMerger", ("sd-webui-supermerger",),
                "Checkpoint Merger (weighted sum, add difference, text-encoder swap, LoRA bake)"),
    Replacement("CFG Rescale", ("cfg_rescale_webui", "sd-webui-cfg-rescale"), "Rescale CFG beside CFG Scale"),
)


def replacement_for(folder_name: str) -> Replacement | None:
    name = folder_name.lower()
    return next((r for r in REPLACEMENTS if name in r.folders), None)


def is_webui_extension(folder: Path) -> bool:
    return any((folder / marker).exists() for marker in WEBUI_MARKERS)


def not_run_message(folder: Path) -> str:
    """Why a folder without Kiln's entry point is not loaded, with its built-in replacement."""
    if is_webui_extension(folder):
        message = WEBUI_REASON
    else:
        from core.extensions.loader import ENTRY_POINT

        message = f"no {ENTRY_POINT} in the folder: not a Kiln extension"
    replacement = replacement_for(folder.name)
    if replacement is not None:
        message += f"; Kiln has this built in: {replacement.builtin}"
    return message
