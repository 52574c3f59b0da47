"""What a merge is asked to do (``MergeParams``), the WebUI's output name rule and its metadata.

The names, choices and defaults are those of the WebUI's Checkpoint Merger (A1111 v1.10
``modules/extras.py`` ``run_modelmerger`` and ``modules/ui.py``); Kiln adds two things it hides:
replacing A's text encoder with B's, and baking a LoRA into the result at a weight.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidParameterError, KilnError

NO_INTERPOLATION = "No interpolation"
WEIGHTED_SUM = "Weighted sum"
ADD_DIFFERENCE = "Add difference"
INTERP_METHODS = (NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE)
CHECKPOINT_FORMATS = ("ckpt", "safetensors")
# "Copy config from" (the WebUI's radio, type="index"): 0 = the first of A, B, C that has one.
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
NO_VAE = "None"


@dataclass(frozen=True)
class ModelRef:
    """A model file as the merger names it: ``name`` is the WebUI's checkpoint name (the path
    relative to the checkpoint folder, with extension; a LoRA's file stem)."""

    name: str
    path: Path

    @property
    def model_name(self) -> str:
        """The WebUI's ``CheckpointInfo.model_name``: the name with folders joined by ``_``, no extension."""
        flat = self.name.replace("/", "_").replace("\\", "_")
        return flat.rsplit(".", 1)[0] if "." in flat else flat


@dataclass
class MergeParams:
    primary: ModelRef
    secondary: ModelRef | None = None
    tertiary: ModelRef | None = None
    interp_method: str = WEIGHTED_SUM
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: int = 0
    bake_in_vae: str = NO_VAE  # the VAE's name as the WebUI lists it ("None": keep the merged VAE)
    bake_in_vae_path: Path | None = None
    discard_weights: str = ""  # a regular expression; matching keys are left out of the file
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"
    # Kiln extras
    replace_text_encoder: bool = False  # every text-encoder tensor from B, whatever the method
    lora: ModelRef | None = None  # a LoRA / LyCORIS file baked into the result
    lora_weight: float = 1.0
    overwrite: bool = False  # only when the person said so: an existing file is never replaced silently

    @property
    def uses_secondary(self) -> bool:
        return self.interp_method != NO_INTERPOLATION or self.replace_text_encoder

    @property
    def uses_tertiary(self) -> bool:
        return self.interp_method == ADD_DIFFERENCE

    def validate(self) -> None:
        """Refuse what cannot run, before any file is opened (the WebUI's "Failed: ..." messages)."""
        if self.interp_method not in INTERP_METHODS:
            raise InvalidParameterError("interp_method", f"unknown method {self.interp_method!r}",
                                        hint=f"one of {', '.join(INTERP_METHODS)}")
        if self.uses_secondary and self.secondary is None:
            raise KilnError("Merging requires a secondary model.", hint="choose model B")
        if self.uses_tertiary and self.tertiary is None:
            raise KilnError(f"Interpolation method ({self.interp_method}) requires a tertiary model.",
                            hint="choose model C")
        if not math.isfinite(float(self.multiplier)):
            raise InvalidParameterError("multiplier", "must be a number")
        if not math.isfinite(float(self.lora_weight)):
            raise InvalidParameterError("lora_weight", "must be a number")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise InvalidParameterError("checkpoint_format", f"unknown format {self.checkpoint_format!r}",
                                        hint="ckpt or safetensors")
        if int(self.config_source) not in range(len(CONFIG_SOURCES)):
            raise InvalidParameterError("config_source", f"must be 0..{len(CONFIG_SOURCES) - 1}")
        if self.bake_in_vae not in (NO_VAE, "") and self.bake_in_vae_path is None:
            raise KilnError(f"VAE {self.bake_in_vae!r} not found", hint="press 🔄 beside Bake in VAE")
        if self.discard_weights:
            try:
                re.compile(self.discard_weights)
            except re.error as exc:
                raise InvalidParameterError("discard_weights", f"not a regular expression ({exc})",
                                            hint="e.g. model_ema to leave out the EMA weights") from exc
        name = self.custom_name.strip()
        if name and (any(c in name for c in '/\\:*?"<>|') or name in (".", "..")):
            raise InvalidParameterError("custom_name", f"{name!r} is not a plain file name",
                                        hint="leave out folders and the characters / \\ : * ? \" < > |")
        try:
            extra = json.loads(self.metadata_json or "{}")
        except json.JSONDecodeError as exc:
            raise InvalidParameterError("metadata_json", f"not valid JSON ({exc})") from exc
        if not isinstance(extra, dict):
            raise InvalidParameterError("metadata_json", "must be a JSON object")


def _num(value: float) -> str:
    """A multiplier as the WebUI writes it in a name: Python's ``str(round(x, 2))``."""
    return str(round(float(value), 2))


def output_stem(params: MergeParams) -> str:
    """The file name without extension: the custom name, else the WebUI's rule for the method
    (``0.7(a) + 0.3(b)``, ``a + 0.3(b - c)``, ``a``), with Kiln's extras named after it."""
    custom = params.custom_name.strip()
    for suffix in CHECKPOINT_FORMATS:  # "mine.safetensors" means mine.safetensors, not mine.safetensors.safetensors
        if custom.lower().endswith(f".{suffix}") and len(custom) > len(suffix) + 1:
            custom = custom[: -len(suffix) - 1]
    if custom:
        return custom
    a = params.primary.model_name
    m = float(params.multiplier)
    if params.interp_method == WEIGHTED_SUM:
        stem = f"{_num(1 - m)}({a}) + {_num(m)}({params.secondary.model_name})"
    elif params.interp_method == ADD_DIFFERENCE:
        stem = f"{a} + {_num(m)}({params.secondary.model_name} - {params.tertiary.model_name})"
    else:
        stem = a
    if params.replace_text_encoder:
        stem += f" + te({params.secondary.model_name})"
    if params.lora is not None:
        stem += f" + {_num(params.lora_weight)}({params.lora.name})"
    return stem


def output_filename(params: MergeParams, *, inpainting: bool, instruct_pix2pix: bool) -> str:
    """``<stem>[.inpainting][.instruct-pix2pix].<format>`` as the WebUI names the result."""
    name = output_stem(params)
    name += ".inpainting" if inpainting else ""
    name += ".instruct-pix2pix" if instruct_pix2pix else ""
    return f"{name}.{params.checkpoint_format}"


def _decoded(value: str | None):
    """A metadata value as the WebUI reads it: JSON when it starts with ``{``."""
    if isinstance(value, str) and value[:1] == "{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


@dataclass
class SourceInfo:
    """One input as the metadata describes it: its ref, its safetensors metadata, its hashes."""

    ref: ModelRef
    metadata: dict[str, str]
    sha256: str
    legacy_hash: str


def merge_recipe(params: MergeParams, *, sha256: Callable[[ModelRef], str], inpainting: bool,
                 instruct_pix2pix: bool) -> dict:
    """The WebUI's ``sd_merge_recipe`` (field for field), plus Kiln's extras when they were used."""
    recipe = {
        "type": "webui",  # the WebUI's merger wrote it (Kiln writes the same recipe)
        "primary_model_hash": sha256(params.primary),
        "secondary_model_hash": sha256(params.secondary) if params.uses_secondary else None,
        "tertiary_model_hash": sha256(params.tertiary) if params.uses_tertiary else None,
        "interp_method": params.interp_method,
        "multiplier": float(params.multiplier),
        "save_as_half": bool(params.save_as_half),
        "custom_name": params.custom_name,
        "config_source": int(params.config_source),
        "bake_in_vae": params.bake_in_vae or NO_VAE,
        "discard_weights": params.discard_weights,
        "is_inpainting": inpainting,
        "is_instruct_pix2pix": instruct_pix2pix,
    }
    if params.replace_text_encoder:
        recipe["kiln_text_encoder_from"] = "secondary"
    if params.lora is not None:
        recipe["kiln_lora"] = {"name": params.lora.name, "weight": float(params.lora_weight)}
    return recipe


def merge_models(sources: list[SourceInfo]) -> dict:
    """The WebUI's ``sd_merge_models``: sha256 -> {name, legacy_hash, sd_merge_recipe} of each
    input, plus the ``sd_merge_models`` each input carries (a merge of merges keeps its tree)."""
    out: dict = {}
    for source in sources:
        out[source.sha256] = {"name": source.ref.name, "legacy_hash": source.legacy_hash,
                              "sd_merge_recipe": _decoded(source.metadata.get("sd_merge_recipe"))}
        inherited = _decoded(source.metadata.get("sd_merge_models"))
        if isinstance(inherited, dict):
            out.update(inherited)
    return out
