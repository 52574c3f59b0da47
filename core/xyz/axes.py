"""The X/Y/Z plot's axis types: the WebUI's labels, indices, value kinds and what each changes.

The lists keep the WebUI v1.10.1 order, so an API script that names an axis by its index gets
the same axis here (``txt2img_axes()`` / ``img2img_axes()``). Axes for WebUI features Kiln does
not have stay in the list to keep the indices, marked ``unsupported`` with the reason; choosing
one is refused before anything runs. Kiln's own axes come after the WebUI's last index.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.generation.params import GenerationParams
from core.generation.run_options import RunOptions
from core.xyz import values as v

INT, FLOAT, TEXT, ORDER = "int", "float", "text", "order"
SEED_AXES = ("Seed", "Var. seed")


class AxisError(ValueError):
    """A value an axis cannot take (unknown sampler, checkpoint, S/R text not in the prompt...)."""


@dataclass
class Cell:
    """What one cell renders with: its own copy of the parameters and of the job's options."""

    params: GenerationParams
    options: RunOptions

    def set_options(self, **changes: Any) -> None:
        self.options = self.options.replace(**changes)


@dataclass
class Catalog:
    """Names the list axes accept, from the engine (checkpoints, VAEs, upscalers)."""

    checkpoints: Callable[[], list[str]] = list
    find_checkpoint: Callable[[str], str | None] = lambda name: None
    vaes: Callable[[], list[str]] = list
    upscalers: Callable[[], list[str]] = list
    styles: Callable[[], list[str]] = list  # the prompt styles of styles.csv


Apply = Callable[[Cell, Any, list], None]


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str  # INT | FLOAT | TEXT | ORDER
    apply: Apply | None = None
    label_style: str = "with_name"  # with_name "Steps: 20" | value | join | nothing | basename
    cost: float = 0.0  # slow to change (a checkpoint load): rendered in the outer loop
    choices: Callable[[Catalog], list[str]] | None = None
    check: Callable[[Any, list, Catalog, str], list] | None = None  # values → values (resolved)
    modes: frozenset[str] = frozenset({"txt2img", "img2img"})
    unsupported: str | None = None

    def label_for(self, value: Any) -> str:
        if self.label_style == "nothing":
            return ""
        if self.label_style == "join":
            return ", ".join(value)
        if self.label_style == "basename":
            return os.path.basename(str(value))
        value = v.format_number(value)
        return str(value) if self.label_style == "value" else f"{self.label}: {value}"


# ------------------------------------------------------------------ what axes change --
def _field(name: str) -> Apply:
    def apply(cell: Cell, value: Any, _values: list) -> None:
        setattr(cell.params, name, value)
    return apply


def _hires(name: str) -> Apply:
    def apply(cell: Cell, value: Any, _values: list) -> None:
        cell.params.hires = dataclasses.replace(cell.params.hires, **{name: value})
    return apply


def _option(name: str) -> Apply:
    def apply(cell: Cell, value: Any, _values: list) -> None:
        cell.set_options(**{name: value})
    return apply


def _bool_option(name: str) -> Apply:
    """The WebUI's apply_override(..., boolean=True): the text "True" (any case) is on, anything else off."""
    def apply(cell: Cell, value: Any, _values: list) -> None:
        cell.set_options(**{name: str(value).strip().lower() == "true"})
    return apply


def _check_bool(_params: Any, values: list, _catalog: Catalog, label: str) -> list:
    for value in values:
        if str(value).strip().lower() not in ("true", "false"):
            raise AxisError(f'{label} value "{value}" is not True or False')
    return values


def _bool_choices(_catalog: Catalog) -> list[str]:
    return ["False", "True"]  # the WebUI's boolean_choice(reverse=True)


def apply_prompt_sr(cell: Cell, value: str, values: list) -> None:
    """Every occurrence of the first value, in prompt and negative prompt, becomes ``value``."""
    p = cell.params
    p.prompt = p.prompt.replace(values[0], value)
    p.negative_prompt = p.negative_prompt.replace(values[0], value)


def apply_prompt_order(cell: Cell, value: tuple[str, ...], _values: list) -> None:
    """The listed tokens swap places in the order ``value`` gives (the WebUI's apply_order):
    the prompt is cut at each token, earliest first, and rebuilt with the tokens reordered."""
    prompt = cell.params.prompt
    found = sorted(((prompt.find(token), token) for token in value), key=lambda t: t[0])
    parts = []
    for _, token in found:
        n = prompt.find(token)
        parts.append(prompt[:n])
        prompt = prompt[n + len(token):]
    cell.params.prompt = "".join(part + value[i] for i, part in enumerate(parts)) + prompt


def apply_denoising(cell: Cell, value: float, _values: list) -> None:
    """img2img's denoising strength; in txt2img the hires fix's (the WebUI's one field)."""
    if hasattr(cell.params, "init_images"):
        cell.params.denoising_strength = value
    else:
        cell.params.hires = dataclasses.replace(cell.params.hires, denoising_strength=value)


def apply_size(cell: Cell, value: str, _values: list) -> None:
    width, height = parse_size(value)
    cell.params.width, cell.params.height = width, height


def apply_clip_skip(cell: Cell, value: int, _values: list) -> None:
    cell.params.clip_skip = value


_NETWORK_TAG = re.compile(r"<(lora|lyco|hypernet):([^:>]+)((?::[^:>]*)*)>")


def apply_network_multiplier(cell: Cell, value: float, _values: list) -> None:
    """Every ``<lora:name:w>`` / ``<hypernet:name:w>`` tag gets multiplier ``value`` (the first
    positional argument; ``te=`` / ``unet=`` named ones stay): the LoRA weight axis without S/R."""
    def replace(match: re.Match) -> str:
        rest = [a for a in match.group(3).split(":")[1:]]
        if rest and "=" not in rest[0]:
            rest = rest[1:]
        return f"<{match.group(1)}:{match.group(2)}:{v.format_number(value)}" + "".join(f":{a}" for a in rest) + ">"

    p = cell.params
    p.prompt = _NETWORK_TAG.sub(replace, p.prompt)
    p.negative_prompt = _NETWORK_TAG.sub(replace, p.negative_prompt)


# --------------------------------------------------------------- value checks --
def parse_size(value: str) -> tuple[int, int]:
    width, sep, height = str(value).lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width.strip()), int(height.strip())
    except ValueError:
        raise AxisError(f"Size {value!r} is not WIDTHxHEIGHT (for example 512x768)") from None


def _check_sizes(_params: Any, values: list, _catalog: Catalog, _label: str) -> list:
    for value in values:
        parse_size(value)
    return values


def _check_prompt_sr(params: Any, values: list, _catalog: Catalog, _label: str) -> list:
    if not values:
        return values
    if values[0] not in params.prompt and values[0] not in params.negative_prompt:
        raise AxisError(f"Prompt S/R did not find {values[0]!r} in prompt or negative prompt "
                        "(the first value is the text to search for; write it into the prompt)")
    return values


def _check_samplers(_params: Any, values: list, _catalog: Catalog, label: str) -> list:
    from core.sampling.samplers import find_sampler

    for value in values:
        if find_sampler(value) is None:
            raise AxisError(f"{label}: unknown sampler {value!r} (see GET /sdapi/v1/samplers)")
    return values


def _check_schedulers(_params: Any, values: list, _catalog: Catalog, label: str) -> list:
    from core.sampling.schedulers import find_scheduler

    for value in values:
        if find_scheduler(value) is None:
            raise AxisError(f"{label}: unknown schedule type {value!r} (see GET /sdapi/v1/schedulers)")
    return values


def _check_checkpoints(_params: Any, values: list, catalog: Catalog, label: str) -> list:
    """Each name as the WebUI's closest-match lookup finds it, replaced by the checkpoint's title."""
    resolved = []
    for value in values:
        title = catalog.find_checkpoint(value)
        if title is None:
            raise AxisError(f"Unknown checkpoint: {value} (see GET /sdapi/v1/sd-models)")
        resolved.append(title)
    return resolved


def _check_vaes(_params: Any, values: list, catalog: Catalog, label: str) -> list:
    """``Automatic`` / ``None`` or a VAE file's name (case-insensitive, as the WebUI's find_vae).
    The WebUI falls back to Automatic for a name it does not know; Kiln says so instead."""
    names = catalog.vaes()
    resolved = []
    for value in values:
        lowered = str(value).strip().lower()
        if lowered in ("auto", "automatic"):
            resolved.append("Automatic")
        elif lowered == "none":
            resolved.append("None")
        else:
            match = next((n for n in names if n.lower() == lowered), None)
            if match is None:
                raise AxisError(f"VAE: unknown VAE {value!r} (see GET /sdapi/v1/sd-vae; or Automatic, None)")
            resolved.append(match)
    return resolved


def _check_upscalers(_params: Any, values: list, catalog: Catalog, label: str) -> list:
    names = catalog.upscalers()
    for value in values:
        if value not in names:
            raise AxisError(f"{label}: unknown upscaler {value!r} (choose one of {', '.join(names)})")
    return values


def _check_rng(_params: Any, values: list, _catalog: Catalog, label: str) -> list:
    from core.settings import RANDN_SOURCES

    for value in values:
        if value not in RANDN_SOURCES:
            raise AxisError(f"RNG source {value!r} is not one of {', '.join(RANDN_SOURCES)}")
    return values


def _check_img2img_only(params: Any, values: list, _catalog: Catalog, label: str) -> list:
    if not hasattr(params, "init_images"):
        raise AxisError(f"{label} changes img2img pictures only")
    return values


def _range(low: float, high: float) -> Callable[[Any, list, Catalog, str], list]:
    def check(_params: Any, values: list, _catalog: Catalog, label: str) -> list:
        for value in values:
            if not low <= value <= high:
                raise AxisError(f'{label} value "{value}" out of range [{low:g}, {high:g}]')
        return values
    return check


def _has_network_tags(params: Any, values: list, _catalog: Catalog, label: str) -> list:
    if not _NETWORK_TAG.search(params.prompt + params.negative_prompt):
        raise AxisError(f"{label}: the prompt has no <lora:...> or <hypernet:...> tag to weigh")
    return values


# ------------------------------------------------------------------- the choices --
def _sampler_choices(_catalog: Catalog) -> list[str]:
    from core.sampling.samplers import sampler_names

    return sampler_names()


def _scheduler_choices(_catalog: Catalog) -> list[str]:
    from core.sampling.schedulers import scheduler_labels

    return scheduler_labels()


def _upscaler_choices(catalog: Catalog) -> list[str]:
    return catalog.upscalers()


def _checkpoint_choices(catalog: Catalog) -> list[str]:
    return sorted(catalog.checkpoints(), key=str.casefold)


def _apply_styles(cell: Cell, value: Any, _values: list) -> None:
    """The WebUI's Styles axis: the value's comma-separated style names join the job's styles."""
    cell.params.styles = [*cell.params.styles, *str(value).split(",")]


def _check_styles(_params: Any, values: list, catalog: Catalog, label: str) -> list:
    """Every name must be a style of styles.csv (the WebUI skips unknown ones: a cell without its style)."""
    names = catalog.styles()
    for value in values:
        for name in str(value).split(","):
            if name not in names:
                known = ", ".join(names) or "none in styles.csv"
                raise AxisError(f"{label}: no prompt style named {name!r} (the styles: {known})")
    return values


def _style_choices(catalog: Catalog) -> list[str]:
    return catalog.styles()


def _vae_choices(catalog: Catalog) -> list[str]:
    return ["None", *catalog.vaes()]


def _rng_choices(_catalog: Catalog) -> list[str]:
    from core.settings import RANDN_SOURCES

    return list(RANDN_SOURCES)


def _no(label: str, kind: str, why: str, modes: tuple[str, ...] = ("txt2img", "img2img")) -> Axis:
    return Axis(label, kind, unsupported=why, modes=frozenset(modes))


T2I, I2I = ("txt2img",), ("img2img",)

# The WebUI v1.10.1 order (scripts/xyz_grid.py axis_options); txt2img/img2img filter it.
ALL_AXES: tuple[Axis, ...] = (
    Axis("Nothing", TEXT, lambda cell, value, values: None, label_style="nothing"),
    Axis("Seed", INT, _field("seed")),
    Axis("Var. seed", INT, _field("subseed")),
    Axis("Var. strength", FLOAT, _field("subseed_strength"), check=_range(0, 1)),
    Axis("Steps", INT, _field("steps"), check=_range(1, 500)),
    Axis("Hires steps", INT, _hires("steps"), check=_range(0, 500), modes=frozenset(T2I)),
    Axis("CFG Scale", FLOAT, _field("cfg_scale"), check=_range(0, 100)),
    Axis("Image CFG Scale", FLOAT, _field("image_cfg_scale"), modes=frozenset(I2I)),
    Axis("Prompt S/R", TEXT, apply_prompt_sr, label_style="value", check=_check_prompt_sr),
    Axis("Prompt order", ORDER, apply_prompt_order, label_style="join"),
    Axis("Sampler", TEXT, _field("sampler_name"), label_style="value", choices=_sampler_choices,
         check=_check_samplers),
    Axis("Hires sampler", TEXT, _hires("sampler_name"), choices=_sampler_choices, check=_check_samplers,
         modes=frozenset(T2I)),
    Axis("Checkpoint name", TEXT, _field("checkpoint"), label_style="basename", cost=1.0,
         choices=_checkpoint_choices, check=_check_checkpoints),
    Axis("Negative Guidance minimum sigma", FLOAT, _field("s_min_uncond"), check=_range(0, 15)),
    Axis("Sigma Churn", FLOAT, _field("s_churn")),
    Axis("Sigma min", FLOAT, _field("s_tmin")),
    Axis("Sigma max", FLOAT, _field("s_tmax")),
    Axis("Sigma noise", FLOAT, _field("s_noise")),
    Axis("Schedule type", TEXT, _field("scheduler"), choices=_scheduler_choices, check=_check_schedulers),
    Axis("Schedule min sigma", FLOAT, _option("sigma_min"), check=_range(0, 1000)),
    Axis("Schedule max sigma", FLOAT, _option("sigma_max"), check=_range(0, 1000)),
    Axis("Schedule rho", FLOAT, _option("rho"), check=_range(0, 100)),
    Axis("Beta schedule alpha", FLOAT, _option("beta_dist_alpha"), check=_range(0.01, 1)),
    Axis("Beta schedule beta", FLOAT, _option("beta_dist_beta"), check=_range(0.01, 1)),
    Axis("Eta", FLOAT, _field("eta"), check=_range(0, 1)),
    Axis("Clip skip", INT, apply_clip_skip, check=_range(1, 12)),
    Axis("Denoising", FLOAT, apply_denoising, check=_range(0, 1)),
    Axis("Initial noise multiplier", FLOAT, _field("initial_noise_multiplier"), check=_check_img2img_only),
    Axis("Extra noise", FLOAT, _option("img2img_extra_noise"), check=_range(0, 1)),
    Axis("Cond. Image Mask Weight", FLOAT, _option("inpainting_mask_weight"), check=_range(0, 1),
         modes=frozenset(I2I)),
    Axis("Hires upscaler", TEXT, _hires("upscaler"), choices=_upscaler_choices, check=_check_upscalers,
         modes=frozenset(T2I)),
    Axis("VAE", TEXT, _option("sd_vae"), cost=0.7, choices=_vae_choices, check=_check_vaes),
    Axis("Styles", TEXT, _apply_styles, choices=_style_choices, check=_check_styles),
    Axis("UniPC Order", INT, _option("uni_pc_order"), check=_range(1, 50)),
    _no("Face restore", TEXT, "Kiln has no face restoration"),
    _no("Token merging ratio", FLOAT, "Kiln has no token merging"),
    _no("Token merging ratio high-res", FLOAT, "Kiln has no token merging"),
    Axis("Always discard next-to-last sigma", TEXT, _bool_option("always_discard_next_to_last_sigma"),
         choices=_bool_choices, check=_check_bool),
    Axis("SGM noise multiplier", TEXT, _bool_option("sgm_noise_multiplier"),
         choices=_bool_choices, check=_check_bool),
    _no("Refiner checkpoint", TEXT, "Kiln has no refiner"),
    _no("Refiner switch at", FLOAT, "Kiln has no refiner"),
    Axis("RNG source", TEXT, _option("randn_source"), choices=_rng_choices, check=_check_rng),
    _no("FP8 mode", TEXT, "Kiln has no FP8 mode"),
    Axis("Size", TEXT, apply_size, label_style="value", check=_check_sizes),
    # Kiln's own, after the WebUI's indices.
    Axis("Rescale CFG", FLOAT, _field("rescale_cfg"), check=_range(0, 1)),
    Axis("Extra networks multiplier", FLOAT, apply_network_multiplier, check=_has_network_tags),
)


# Extensions' axes (register_axis), after Kiln's own: the WebUI's indices stay where they are.
_EXTENSION_AXES: list[Axis] = []
AXIS_KINDS = (INT, FLOAT, TEXT, ORDER)


def register_axis(axis: Axis) -> Axis:
    """Add an axis type (an extension's) at the end of the list; ValueError when its label is
    taken (axes are chosen by label, in any case) or it cannot change anything."""
    if not isinstance(axis, Axis):
        raise ValueError(f"an axis is a core.xyz.axes.Axis, not {type(axis).__name__}")
    if not axis.label or axis.kind not in AXIS_KINDS:
        raise ValueError(f"axis {axis.label!r}: needs a label and a kind of {', '.join(AXIS_KINDS)}")
    if not callable(axis.apply) or axis.unsupported is not None:
        raise ValueError(f"axis {axis.label!r}: needs apply(cell, value, values), and unsupported left unset")
    if not axis.modes or not axis.modes <= {"txt2img", "img2img"}:
        raise ValueError(f"axis {axis.label!r}: modes must be txt2img and/or img2img")
    wanted = axis.label.casefold()
    if any(a.label.casefold() == wanted for a in (*ALL_AXES, *_EXTENSION_AXES)):
        raise ValueError(f"axis label {axis.label!r} is taken")
    _EXTENSION_AXES.append(axis)
    return axis


def unregister_axis(label: str) -> None:
    """Remove an axis ``register_axis`` added."""
    for index, axis in enumerate(_EXTENSION_AXES):
        if axis.label == label:
            del _EXTENSION_AXES[index]
            return


@dataclass(frozen=True)
class AxisList:
    """One tab's axes in the WebUI's order (its indices are the API's x_type / y_type / z_type)."""

    mode: str
    axes: tuple[Axis, ...] = field(default_factory=tuple)

    def find(self, key: int | str) -> Axis:
        """By index (an int or digits, as the API sends it) or by label (any case)."""
        if isinstance(key, bool):
            raise AxisError(f"axis type {key!r} is neither an index nor a name")
        if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
            index = int(key)
            if not 0 <= index < len(self.axes):
                raise AxisError(f"axis type {index} is out of range: {self.mode} has 0..{len(self.axes) - 1} "
                                "(see GET /sdapi/v1/script-info)")
            return self.axes[index]
        if isinstance(key, str):
            wanted = key.strip().casefold()
            for axis in self.axes:
                if axis.label.casefold() == wanted:
                    return axis
        raise AxisError(f"unknown axis type {key!r}; the {self.mode} axes are: "
                        + ", ".join(a.label for a in self.supported()))

    def supported(self) -> list[Axis]:
        return [a for a in self.axes if a.unsupported is None]

    def labels(self) -> list[str]:
        return [a.label for a in self.axes]


def axis_list(mode: str) -> AxisList:
    if mode not in ("txt2img", "img2img"):
        raise ValueError(f"no X/Y/Z axes for mode {mode!r}")
    return AxisList(mode, tuple(a for a in (*ALL_AXES, *_EXTENSION_AXES) if mode in a.modes))


def txt2img_axes() -> AxisList:
    return axis_list("txt2img")


def img2img_axes() -> AxisList:
    return axis_list("img2img")
