"""Persisted user options (config.json), plus the device policy the flags ask for.

config.json uses the AUTOMATIC1111 WebUI's option keys, so a WebUI config.json dropped into the
data folder keeps the user's checkpoint, VAE, clip skip, RNG source and ENSD. Keys Kiln does not
use are kept untouched on save: sharing a data folder with the WebUI never loses its settings.
A corrupt config.json never blocks the start: it is copied aside as config.json.bak and Kiln
starts from defaults with a warning.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import features

from core.cli import Flags
from core.errors import KilnError
from core.fileio import atomic_write_json, remove_stale_temp_files, unique_path
from core.paths import KilnPaths
from core.sampling.timestep_samplers import UNIPC_SKIP_TYPES, UNIPC_VARIANTS
from core.styles import INFOTEXT_STYLES_CHOICES

RANDN_SOURCES = ("GPU", "CPU", "NV")
# The WebUI's "Disable all extensions" choices. Kiln ships no extensions of its own, so every
# folder in extensions/ is an "extra" one: "extra" and "all" both switch them all off.
DISABLE_EXTENSIONS_CHOICES = ("none", "extra", "all")
# The page's language (Kiln's option): "auto" follows the browser; the others are ui/i18n.py's locales.
UI_LANGUAGES = ("auto", "en", "zh-CN")
# The formats pictures are saved in (samples_format, grid_format); AVIF where Pillow can write it.
AVIF_AVAILABLE = features.check("avif")
SAMPLE_FORMATS = ("png", "jpg", "jpeg", "webp") + (("avif",) if AVIF_AVAILABLE else ())
# Live preview methods: the WebUI's "Approx NN" and "TAESD" need model files it downloads.
PREVIEW_METHODS = ("Approx cheap", "Full")

# WebUI options Kiln keeps at one behaviour, and why. Sending that value is accepted (a client
# posting back the WebUI's whole option dict); any other value is refused naming the reason,
# never stored and ignored.
FIXED_WEBUI_OPTIONS: dict[str, tuple[Any, str]] = {
    "token_merging_ratio": (0.0, "Kiln has no token merging (ToMe): it trades picture quality for speed and "
                                 "Kiln's U-Net runs unmerged"),
    "token_merging_ratio_hr": (0.0, "Kiln has no token merging (ToMe)"),
    "token_merging_ratio_img2img": (0.0, "Kiln has no token merging (ToMe)"),
    "upcast_attn": (False, "not needed: Kiln's attention is PyTorch SDPA (or xformers), whose half-precision "
                           "kernels accumulate in fp32; the WebUI's upcast fixes its own split attention. If a "
                           "model still makes black pictures, start with --no-half"),
    "live_previews_image_format": ("png", "Kiln's page receives live previews as PNG"),
    "live_preview_content": ("Combined", "Kiln's live preview shows the combined (CFG) prediction, the WebUI's "
                                         "'Combined'"),
    "sd_vae_as_default": (False, "the WebUI 1.6 replaced it with sd_vae_overrides_per_model_preferences (its "
                                 "opposite): set that one"),
}


@dataclass
class Options:
    """User options. Names, defaults and meanings are the WebUI's (modules/shared_options.py)."""

    sd_model_checkpoint: str | None = None  # checkpoint title or file name; None = first found
    sd_checkpoints_limit: int = 1  # checkpoints kept loaded at once: a switch back to a kept one reads no file
    sd_vae: str = "Automatic"  # "Automatic" (same-name VAE beside checkpoint) | "None" | VAE file name
    sd_vae_overrides_per_model_preferences: bool = True  # the chosen VAE wins over one beside the checkpoint
    CLIP_stop_at_last_layers: int = 1  # clip skip: 1 uses the last layer, 2 skips one
    randn_source: str = "GPU"  # where initial noise is drawn: "GPU" | "CPU" | "NV"
    eta_ancestral: float = 1.0  # eta for ancestral samplers
    eta_ddim: float = 0.0  # eta for DDIM (0 = deterministic)
    eta_noise_seed_delta: int = 0  # ENSD: added to the seed for ancestral noise
    s_churn: float = 0.0  # Euler / Heun / DPM2 "sigma churn"
    s_tmin: float = 0.0  # sigma tmin
    s_tmax: float = 0.0  # sigma tmax; 0 = infinity, as in the WebUI
    s_noise: float = 1.0  # noise multiplier for ancestral / SDE samplers
    s_min_uncond: float = 0.0  # "Negative Guidance minimum sigma" (NGMS): below it, skip the negative prompt
    sigma_min: float = 0.0  # the schedule's lowest sigma; 0 = the model's (~0.03)
    sigma_max: float = 0.0  # the schedule's highest sigma; 0 = the model's (~14.6)
    rho: float = 0.0  # 0 = the schedule's own (7 for Karras, 1 for Polyexponential)
    beta_dist_alpha: float = 0.6  # the Beta schedule's alpha
    beta_dist_beta: float = 0.6  # the Beta schedule's beta
    always_discard_next_to_last_sigma: bool = False
    sgm_noise_multiplier: bool = False  # txt2img starts from noise * sqrt(1 + sigma_max²), as SGM does
    uni_pc_variant: str = "bh1"  # "bh1" | "bh2"
    uni_pc_skip_type: str = "time_uniform"  # "time_uniform" | "time_quadratic" | "logSNR"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    img2img_fix_steps: bool = False  # "do exactly the amount of steps the slider specifies"
    initial_noise_multiplier: float = 1.0  # img2img: noise multiplier for the init latent
    img2img_extra_noise: float = 0.0  # img2img and hires fix: the noise added once more at this strength
    inpainting_mask_weight: float = 1.0  # "Conditional mask weight" for inpainting checkpoints
    img2img_background_color: str = "#ffffff"  # fills transparent parts of img2img inputs
    live_previews_enable: bool = True
    show_progress_every_n_steps: int = 10  # live preview period in steps; -1 = only at the end
    show_progress_type: str = "Approx cheap"  # live preview method: "Approx cheap" | "Full" (VAE decode)
    live_preview_refresh_period: int = 300  # ms between progress / preview updates on the page (WebUI: 1000)
    samples_save: bool = True  # always save generated images
    samples_format: str = "png"  # png | jpg | jpeg | webp | avif (where Pillow writes AVIF)
    samples_filename_pattern: str = ""  # "" = "[seed]" (with save_to_dirs) or "[seed]-[prompt_spaces]"
    save_images_add_number: bool = True  # "00012-<seed>.png" numbering
    grid_save: bool = True  # save every grid (the X/Y/Z plot's)
    grid_format: str = "png"
    grid_save_to_dirs: bool = True
    enable_pnginfo: bool = True  # the infotext inside the file (PNG text chunk, EXIF UserComment)
    save_txt: bool = False  # and beside it as <name>.txt
    jpeg_quality: int = 80  # JPEG, WebP and AVIF quality
    webp_lossless: bool = False
    save_to_dirs: bool = True  # into a folder below the output folder that directories_filename_pattern names
    directories_filename_pattern: str = "[date]"
    directories_max_prompt_words: int = 8  # words of [prompt_words]
    outdir_txt2img_samples: str = "outputs/txt2img-images"
    outdir_img2img_samples: str = "outputs/img2img-images"
    outdir_txt2img_grids: str = "outputs/txt2img-grids"
    outdir_img2img_grids: str = "outputs/img2img-grids"
    extra_networks_default_multiplier: float = 1.0  # the weight a clicked LoRA / hypernetwork card writes
    add_model_hash_to_info: bool = True  # "Model hash: ..." in the infotext
    add_model_name_to_info: bool = True  # "Model: ..." in the infotext
    add_vae_hash_to_info: bool = True
    add_vae_name_to_info: bool = True
    infotext_styles: str = "Apply if any"  # pasting an infotext: "Ignore" | "Apply" | "Discard" | "Apply if any"
    # Settings shown at the top of every page beside the checkpoint (read at start, as in the WebUI).
    quicksettings_list: list[str] = field(default_factory=lambda: ["sd_model_checkpoint"])
    xyz_max_cells: int = 100  # Kiln's: an X/Y/Z plot over this many cells asks first (API: refused); 0 = no limit
    disabled_extensions: list[str] = field(default_factory=list)  # folder names in extensions/ not to load
    disable_all_extensions: str = "none"  # "none" | "extra" | "all" (read at start)
    ui_language: str = "auto"  # Kiln's: the page's language, "auto" (the browser's) | "en" | "zh-CN"
    # config.json keys Kiln does not use (WebUI's, extensions'): written back as they were.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.extra)
        data.update({k: v for k, v in asdict(self).items() if k != "extra"})
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> tuple[Options, list[str]]:
        """Build options from a config.json object; bad values fall back to defaults with a warning."""
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        warnings: list[str] = []
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                extra[key] = value
                continue
            if key == "quicksettings_list" and isinstance(value, list):
                # A WebUI's list may name its extensions' settings: keep the ones Kiln has, say which not.
                unknown = [k for k in value if isinstance(k, str) and k not in OPTION_DEFAULTS]
                if unknown:
                    warnings.append(f"config.json: quicksettings_list: {', '.join(unknown)} not shown (Kiln has "
                                    "no such settings)")
                    value = [k for k in value if k not in unknown]
            default = OPTION_DEFAULTS[key]
            try:
                values[key] = _check_option(key, value, default)
            except ValueError as exc:
                warnings.append(f"config.json: option {key}: {exc}; using the default {default!r}")
        return cls(**values, extra=extra), warnings


_CHOICES: dict[str, tuple[str, ...]] = {
    "randn_source": RANDN_SOURCES,
    "samples_format": SAMPLE_FORMATS,
    "grid_format": SAMPLE_FORMATS,
    "infotext_styles": INFOTEXT_STYLES_CHOICES,
    "show_progress_type": PREVIEW_METHODS,
    "uni_pc_variant": UNIPC_VARIANTS,
    "uni_pc_skip_type": UNIPC_SKIP_TYPES,
    "disable_all_extensions": DISABLE_EXTENSIONS_CHOICES,
    "ui_language": UI_LANGUAGES,
}
_MINIMUM: dict[str, int] = {"CLIP_stop_at_last_layers": 1, "show_progress_every_n_steps": -1, "xyz_max_cells": 0}
# The WebUI's slider ranges, where a value outside them breaks generation rather than tuning it.
_RANGES: dict[str, tuple[float, float]] = {
    "CLIP_stop_at_last_layers": (1, 12),
    "sd_checkpoints_limit": (1, 10),
    "uni_pc_order": (1, 50),
    "live_preview_refresh_period": (50, 10000),
    "eta_ancestral": (0.0, 1.0),
    "eta_ddim": (0.0, 1.0),
    "s_churn": (0.0, 100.0),
    "s_tmin": (0.0, 10.0),
    "s_tmax": (0.0, 999.0),
    "s_noise": (0.0, 1.1),
    "s_min_uncond": (0.0, 15.0),
    "sigma_min": (0.0, 1000.0),
    "sigma_max": (0.0, 1000.0),
    "rho": (0.0, 100.0),
    "extra_networks_default_multiplier": (0.0, 2.0),
    "beta_dist_alpha": (0.01, 1.0),
    "beta_dist_beta": (0.01, 1.0),
    "initial_noise_multiplier": (0.0, 1.5),
    "img2img_extra_noise": (0.0, 1.0),
    "inpainting_mask_weight": (0.0, 1.0),
    "jpeg_quality": (1, 100),
    "directories_max_prompt_words": (1, 20),
}


def _check_option(key: str, value: Any, default: Any) -> Any:
    """``value`` if it fits the option's type and range, else ValueError saying why."""
    if key == "quicksettings_list":
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{value!r} is not a list of setting names")
        unknown = [k for k in value if k not in OPTION_DEFAULTS]
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))}: Kiln has no such setting")
        return list(dict.fromkeys(value))
    if key == "sd_model_checkpoint":
        if value is None or isinstance(value, str):
            return value or None
        raise ValueError(f"{value!r} is not a checkpoint name")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not true/false")
    if isinstance(default, int):
        # JSON true/false are ints to Python; a float like 2.0 from a hand edit is fine.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ValueError(f"{value!r} is not a whole number")
        value = int(value)
        if key in _MINIMUM and value < _MINIMUM[key]:
            raise ValueError(f"{value} is below the minimum {_MINIMUM[key]}")
        return _in_range(key, value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{value!r} is not a number")
        return _in_range(key, float(value))
    if isinstance(default, list):  # disabled_extensions: names, as the WebUI stores them
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{value!r} is not a list of names")
        return list(dict.fromkeys(value))
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not text")
        if key in ("samples_format", "grid_format"):
            value = value.lower().lstrip(".")
            if value == "avif" and not AVIF_AVAILABLE:
                raise ValueError("this Pillow has no AVIF encoder (pip install -U pillow); use png, jpg or webp")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ValueError(f"{value!r} is not one of {', '.join(_CHOICES[key])}")
        if key in _PATTERNS:
            _check_pattern(key, value)
        return value
    return value


_PATTERNS = ("samples_filename_pattern", "directories_filename_pattern")


def _check_pattern(key: str, value: str) -> None:
    """Names made from a pattern stay below the output folder: no absolute folder, no ``..``;
    a file name pattern names no folder at all."""
    parts = value.replace("\\", "/").split("/")
    if key == "samples_filename_pattern" and len(parts) > 1:
        raise ValueError(f"{value!r}: a file name pattern cannot hold folders; put them in directories_filename_pattern")
    if parts[0] == "" and len(parts) > 1 or ".." in parts or value[1:2] == ":":
        raise ValueError(f"{value!r} would leave the output folder; use tags and folder names below it")


def _in_range(key: str, value: float) -> Any:
    low, high = _RANGES.get(key, (-math.inf, math.inf))
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low:g}..{high:g}")
    return value


def load_options(config_path: Path) -> tuple[Options, list[str]]:
    """Read config.json. Missing → defaults. Unreadable/corrupt → copy kept as .bak, defaults, warning."""
    config_path = Path(config_path)
    if not config_path.exists():
        return Options(), []
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"top level is {type(data).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        backup = _keep_bad_copy(config_path)
        kept = f"kept a copy as {backup}" if backup else "could not copy it aside"
        return Options(), [
            f"{config_path}: unreadable settings ({exc}); {kept}; starting with default settings"
        ]
    return Options.from_json(data)


def _keep_bad_copy(config_path: Path) -> Path | None:
    backup = unique_path(config_path.parent, config_path.name, ".bak")
    try:
        shutil.copy2(config_path, backup)
    except OSError:
        return None
    return backup


@dataclass(frozen=True)
class DevicePolicy:
    """Device, dtypes, attention and offload mode for the model code (from the flags)."""

    device: str  # main model code: "cuda:0", "mps", "cpu"
    dtype: str  # torch dtype name for UNet / text encoders: "float16" | "float32"
    vae_dtype: str
    attention: str  # "sdpa" | "xformers"
    offload: str  # "none" | "medvram" | "lowvram"
    autocast: bool = False  # run the UNet under torch.autocast (--precision autocast on a GPU)
    cpu_modules: frozenset[str] = frozenset()  # --use-cpu names ("sd", "interrogate", "esrgan"; "all")
    accelerator: str = "cpu"  # the best device here; modules not named by --use-cpu run on it
    warnings: tuple[str, ...] = ()

    def device_for(self, module: str) -> str:
        """Device for a module group ("sd", "interrogate", "esrgan"): the CPU when --use-cpu names it."""
        if "all" in self.cpu_modules or module in self.cpu_modules:
            return "cpu"
        return self.accelerator

    def torch_dtype(self):
        """``torch.float16`` / ``torch.float32`` for the model (torch imported only when asked)."""
        import torch

        return getattr(torch, self.dtype)

    def torch_vae_dtype(self):
        import torch

        return getattr(torch, self.vae_dtype)


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_devices(flags: Flags, cuda_device_count: int) -> list[int | None]:
    """The workers a machine runs (pure): one per CUDA device that ``--device-id`` lists
    (``all``: every visible one), else one on the default device. Machines without CUDA have one
    worker (its policy says why --device-id was ignored). An index the machine lacks: KilnError."""
    if cuda_device_count == 0 or {"all", "sd"} & set(flags.use_cpu):
        return [None]
    if flags.all_devices:
        return list(range(cuda_device_count))
    if not flags.device_ids:
        return [None]
    missing = [i for i in flags.device_ids if i >= cuda_device_count]
    if missing:
        raise KilnError(f"--device-id {','.join(map(str, flags.device_ids))}: this machine has "
                        f"{cuda_device_count} CUDA device(s), no device {missing[0]}",
                        hint=f"use indexes 0 to {cuda_device_count - 1}, or --device-id all")
    return list(flags.device_ids)


def derive_device_policy(
    flags: Flags,
    *,
    cuda_device_count: int,
    mps_available: bool = False,
    xformers_available: bool = False,
    device_id: int | None = None,
) -> DevicePolicy:
    """The policy the flags ask for on a machine with the given capabilities (pure; testable anywhere).

    ``device_id``: the CUDA device of one worker (default: --device-id's first, else 0)."""
    warnings: list[str] = []
    cuda_available = cuda_device_count > 0
    cpu_modules = frozenset(flags.use_cpu)
    # The best device on this machine; modules not named by --use-cpu run there.
    if cuda_available:
        index = device_id if device_id is not None else flags.device_id if flags.device_id is not None else 0
        if index >= cuda_device_count:
            raise KilnError(
                f"--device-id {index}: this machine has {cuda_device_count} CUDA device(s)",
                hint=f"use --device-id 0 to {cuda_device_count - 1}, or leave it out",
            )
        accelerator = f"cuda:{index}"
    elif mps_available:
        accelerator = "mps"
    else:
        accelerator = "cpu"
    if (flags.device_id is not None or flags.all_devices) and not accelerator.startswith("cuda"):
        shown = "all" if flags.all_devices else ",".join(map(str, flags.device_ids or (flags.device_id,)))
        warnings.append(f"--device-id {shown} ignored: there is no CUDA device (one worker on the {accelerator})")
    # The device of the main model code (checkpoint, VAE, text encoders, training).
    device = "cpu" if ("all" in cpu_modules or "sd" in cpu_modules) else accelerator

    full = flags.no_half or flags.precision == "full"
    if device == "cpu":
        # fp16 matmuls on CPU are slow or unsupported: always 32-bit there.
        dtype = vae_dtype = "float32"
    else:
        dtype = "float32" if full else "float16"
        # The WebUI's macOS defaults run the VAE in fp32 (fp16 VAE gives NaNs/black images on MPS).
        vae_fp32 = full or flags.no_half_vae or device == "mps"
        vae_dtype = "float32" if vae_fp32 else "float16"
    autocast = device.startswith("cuda") and dtype == "float16" and flags.precision == "autocast"

    attention = "sdpa"
    if flags.xformers:
        if xformers_available and device.startswith("cuda"):
            attention = "xformers"
        elif not xformers_available:
            warnings.append("--xformers: xformers is not installed (pip install -e .[xformers]); using PyTorch SDPA")
        else:
            warnings.append(f"--xformers: xformers needs a CUDA GPU, running on {device}; using PyTorch SDPA")

    offload = "lowvram" if flags.lowvram else "medvram" if flags.medvram else "none"
    if offload != "none" and not device.startswith("cuda"):
        warnings.append(f"--{offload} ignored: it saves GPU memory, and Kiln runs on {device}")
        offload = "none"

    return DevicePolicy(
        device=device, dtype=dtype, vae_dtype=vae_dtype, attention=attention, offload=offload,
        autocast=autocast, cpu_modules=cpu_modules, accelerator=accelerator, warnings=tuple(warnings),
    )


def _remove_stale_config_temps(config_path: Path) -> None:
    """Temp files (``.config.json.XXXXXXXX.tmp``) that a writer killed mid-save left beside it."""
    try:
        remove_stale_temp_files(config_path.parent, config_path.name)
    except OSError:
        pass  # a folder we cannot list is reported by the load or save itself


class Settings:
    """Flags + folder layout + persisted options: what the app is started with."""

    def __init__(self, flags: Flags, paths: KilnPaths, options: Options | None = None,
                 warnings: list[str] | None = None):
        self.flags = flags
        self.paths = paths
        self.options = options if options is not None else Options()
        # Start-up messages for the console and the UI (bad config.json values, ignored flags).
        self.warnings: list[str] = list(flags.warnings) + list(warnings or [])
        self._save_lock = threading.Lock()

    @classmethod
    def load(cls, flags: Flags, paths: KilnPaths) -> Settings:
        options, warnings = load_options(paths.config_path)
        _remove_stale_config_temps(paths.config_path)
        return cls(flags, paths, options, warnings)

    @classmethod
    def from_flags(cls, flags: Flags, repo_root: Path) -> Settings:
        return cls.load(flags, KilnPaths.from_flags(flags, repo_root))

    def save(self) -> Path:
        """Write config.json atomically, keeping keys other programs put there."""
        with self._save_lock:
            on_disk: dict[str, Any] = {}
            try:
                loaded = json.loads(self.paths.config_path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    on_disk = loaded
            except (OSError, ValueError):
                pass  # missing or corrupt (already kept as .bak at load): nothing to preserve
            data = {**on_disk, **self.options.to_json()}
            written = atomic_write_json(self.paths.config_path, data)
            _remove_stale_config_temps(self.paths.config_path)
            return written

    def update(self, **changes: Any) -> list[str]:
        """Set options by WebUI key (UI / API /sdapi/v1/options). Returns the keys that were rejected."""
        rejected: list[str] = []
        for key, value in changes.items():
            if key not in OPTION_DEFAULTS:
                self.options.extra[key] = value
                continue
            try:
                setattr(self.options, key, _check_option(key, value, OPTION_DEFAULTS[key]))
            except ValueError:
                rejected.append(key)
        return rejected

    # -- changes from people (UI, API) ---------------------------------------------------
    @property
    def frozen(self) -> bool:
        """``--freeze-settings``, on by default when Kiln serves beyond loopback."""
        return bool(getattr(self.flags, "freeze_settings", False)) or not self._loopback()

    @property
    def folders_locked(self) -> bool:
        """``--hide-ui-dir-config``: folder options cannot be changed from the UI or the API."""
        return bool(getattr(self.flags, "hide_ui_dir_config", False)) or not self._loopback()

    def _loopback(self) -> bool:
        from core.api.auth import is_loopback

        return is_loopback(getattr(self.flags, "host", None))

    def check_user_changes(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Changes a person asks for, checked as a whole: the values to store, or the first problem
        as an InvalidParameterError naming the WebUI key. Nothing is applied here.

        Unknown keys are refused (a setting Kiln lacks must not be stored and then ignored);
        folder options must stay inside the data folder; with ``--freeze-settings`` nothing but the
        checkpoint choice changes, with ``--hide-ui-dir-config`` no folder option does.
        """
        from core.errors import InvalidParameterError

        checked: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in OPTION_DEFAULTS:
                if self.options.extra.get(key) == value:
                    continue  # another program's option, sent back unchanged (a GET-then-POST client)
                fixed = FIXED_WEBUI_OPTIONS.get(key)
                if fixed is not None:
                    if value == fixed[0]:
                        continue  # what Kiln does anyway
                    raise InvalidParameterError(key, f"{value!r}: {fixed[1]}", hint=f"Kiln works as {key} = "
                                                f"{fixed[0]!r}; see GET /sdapi/v1/options")
                raise InvalidParameterError(key, "Kiln has no such setting", hint="see GET /sdapi/v1/options")
            current = getattr(self.options, key)
            try:
                value = _check_option(key, value, OPTION_DEFAULTS[key])
            except ValueError as exc:
                raise InvalidParameterError(key, str(exc)) from None
            if value == current:
                continue
            if self.frozen and key != "sd_model_checkpoint":
                raise InvalidParameterError(key, "settings are frozen on this server (--freeze-settings, on with "
                                            "--listen)", hint="ask whoever runs it; per-job override_settings still work")
            if key.startswith("outdir_"):
                if self.folders_locked:
                    raise InvalidParameterError(key, "folders cannot be changed here (--hide-ui-dir-config, on with "
                                                "--listen)", hint="set it in config.json on the server")
                self.paths.check_inside_data_dir(key, value)
            checked[key] = value
        return checked

    def apply_user_changes(self, changes: dict[str, Any]) -> list[str]:
        """Check every change, then store them together and save config.json once; returns the keys set."""
        checked = self.check_user_changes(changes)
        for key, value in checked.items():
            setattr(self.options, key, value)
        if checked:
            self.save()
        return list(checked)

    def startup_checkpoint(self) -> str | None:
        """--ckpt wins over the saved choice, as in the WebUI."""
        return self.flags.ckpt or self.options.sd_model_checkpoint

    def device_policy(self, device_id: int | None = None) -> DevicePolicy:
        """The policy for one worker's device (``device_id`` a CUDA index; None: --device-id's first)."""
        # torch is imported here, not at module level: --help and the UI shell start faster.
        import importlib.util

        import torch

        mps = getattr(torch.backends, "mps", None)
        return derive_device_policy(
            self.flags,
            cuda_device_count=_cuda_device_count(),
            mps_available=bool(mps and mps.is_available()),
            xformers_available=importlib.util.find_spec("xformers") is not None,
            device_id=device_id,
        )

    def worker_devices(self) -> list[int | None]:
        """One entry per worker: the CUDA devices --device-id names (or all of them), else [None]."""
        return worker_devices(self.flags, _cuda_device_count())


def _option_defaults() -> dict[str, Any]:
    """Every option's default by key (a list option's from its factory); ``extra`` is no option."""
    out: dict[str, Any] = {}
    for f in fields(Options):
        if f.name == "extra":
            continue
        out[f.name] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return out


OPTION_DEFAULTS: dict[str, Any] = _option_defaults()


def checked_option(key: str, value: Any) -> Any:
    """``value`` checked for the Kiln option ``key`` (KeyError: not an option Kiln has; ValueError: why not)."""
    return _check_option(key, value, OPTION_DEFAULTS[key])
