"""The trainer's whole configuration, keyed by sd-scripts' argument names with kohya's defaults.

A TOML written for sd-scripts' ``--config_file`` (flat keys, or sections such as lora-scripts'
``[model_arguments]`` whose keys are merged, as kohya's ``read_config_from_file`` does) loads
unchanged; keys Kiln does not have are returned, never dropped silently. Every value is type
checked and a bad one is a KilnError naming the key and the value. ``save_config`` writes the same
format (atomically), so the UI's Save/Load config and ``python -m core.training CONFIG.toml`` share it.

kohya's ``--dataset_config`` TOML ([general], [[datasets]], [[datasets.subsets]]) is read by
``load_dataset_config`` into DatasetSpec / SubsetSpec with kohya's fallback chain
subset -> dataset -> general -> training config -> default.
"""

from __future__ import annotations

import copy
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

from core.errors import KilnError
from core.training.schedulers import SCHEDULERS

# The precision / attention / sampler choices sd-scripts' argparse accepts.
SAMPLE_SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver",
                   "dpmsolver++", "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")
CHOICES: dict[str, tuple] = {
    "mixed_precision": ("no", "fp16", "bf16"),
    "save_precision": (None, "float", "fp16", "bf16"),
    "save_model_as": (None, "ckpt", "pt", "safetensors"),
    "max_token_length": (None, 75, 150, 225),  # kohya: None (=75), 150, 225
    "lr_scheduler": SCHEDULERS,
    "sample_sampler": SAMPLE_SAMPLERS,
    "log_with": (None, "tensorboard", "wandb", "all"),
}


def _f(default: Any, help: str = "", **kw) -> Any:
    """A dataclass field with a help line (shown by config_help / --help)."""

    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """sd-scripts' train_network.py arguments (names and defaults as kohya's argparse)."""

    # model (add_sd_models_arguments)
    pretrained_model_name_or_path: str | None = _f(None, "base checkpoint (.safetensors/.ckpt) or diffusers folder")
    v2: bool = _f(False, "base is Stable Diffusion 2.x")
    v_parameterization: bool = _f(False, "v-prediction loss (SD2 768-v bases)")
    vae: str | None = _f(None, "separate VAE file to use instead of the checkpoint's")
    no_half_vae: bool = _f(False, "keep the VAE in float32 under mixed precision")
    # dataset (add_dataset_arguments)
    train_data_dir: str | None = _f(None, "folder of <repeats>_<name> [class] concept folders")
    reg_data_dir: str | None = _f(None, "folder of regularization concept folders")
    dataset_config: str | None = _f(None, "kohya --dataset_config TOML; replaces train_data_dir/reg_data_dir")
    resolution: str | None = _f(None, '"512" or "512,768" (width,height)')
    enable_bucket: bool = _f(False, "aspect-ratio buckets")
    min_bucket_reso: int = _f(256, "smallest bucket side")
    max_bucket_reso: int = _f(1024, "largest bucket side")
    bucket_reso_steps: int = _f(64, "bucket side step (multiple of 8)")
    bucket_no_upscale: bool = _f(False, "never enlarge images to fill a bucket")
    cache_latents: bool = _f(False, "encode images once and keep the latents in memory")
    cache_latents_to_disk: bool = _f(False, "keep cached latents in .npz files beside the images")
    vae_batch_size: int = _f(1, "images per VAE batch while caching latents")
    caption_extension: str = _f(".caption", "caption file extension (kohya's default is .caption; most use .txt)")
    caption_separator: str = _f(",", "tag separator in captions")
    shuffle_caption: bool = _f(False, "shuffle the comma-separated tags each step")
    keep_tokens: int = _f(0, "keep the first N tags in place when shuffling/dropping")
    keep_tokens_separator: str = _f("", "tags before this separator stay fixed (e.g. |||)")
    caption_prefix: str | None = _f(None, "text put before every caption")
    caption_suffix: str | None = _f(None, "text put after every caption")
    caption_dropout_rate: float = _f(0.0, "probability of training on an empty caption")
    caption_dropout_every_n_epochs: int = _f(0, "drop all captions every N epochs")
    caption_tag_dropout_rate: float = _f(0.0, "probability of dropping each tag")
    flip_aug: bool = _f(False, "random horizontal flip")
    color_aug: bool = _f(False, "random hue shift")
    random_crop: bool = _f(False, "random crop instead of center crop")
    face_crop_aug_range: str | None = _f(None, '"2.0,4.0": crop around the face at a random scale')
    prior_loss_weight: float = _f(1.0, "loss weight of regularization images")
    # network (train_network.py setup_parser)
    network_module: str | None = _f(None, "networks.lora or lycoris.kohya")
    network_dim: int | None = _f(None, "rank (kohya uses 4 when unset); seeds: LoRA <= 64, LoHa <= 32, LoCon <= 12")
    network_alpha: float = _f(1.0, "alpha; scale = alpha / dim")
    network_dropout: float | None = _f(None, "neuron dropout of the LoRA down output")
    network_args: list[str] | None = _f(None, 'list of "key=value" (conv_dim=4, algo=loha, rank_dropout=0.1 ...)')
    network_weights: str | None = _f(None, "start from this LoRA file")
    network_train_unet_only: bool = _f(False, "train only the U-Net part")
    network_train_text_encoder_only: bool = _f(False, "train only the Text Encoder part")
    dim_from_weights: bool = _f(False, "take network_dim from network_weights")
    scale_weight_norms: float | None = _f(None, "max-norm regularization of the LoRA weights")
    training_comment: str | None = _f(None, "comment written into the file's metadata")
    # optimizer (add_optimizer_arguments)
    learning_rate: float = _f(2e-6, "default learning rate (kohya's default 2e-6; LoRA usually 1e-4)")
    unet_lr: float | None = _f(None, "U-Net learning rate (default: learning_rate)")
    text_encoder_lr: float | list[float] | None = _f(None, "Text Encoder learning rate (SDXL: one per encoder)")
    # kohya's default is "" which means AdamW; Kiln spells it out so saved configs say it.
    optimizer_type: str = _f("AdamW", "AdamW (default), AdamW8bit, Lion, SGDNesterov, Adafactor, DAdaptation, Prodigy ...")
    optimizer_args: list[str] | None = _f(None, 'list of "key=value", e.g. ["weight_decay=0.01", "betas=0.9,0.99"]')
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    lr_scheduler: str = _f("constant", ", ".join(SCHEDULERS))
    lr_warmup_steps: int | float = _f(0, "warmup steps, or a ratio of all steps when below 1 (0.1 = 10%)")
    lr_scheduler_num_cycles: int = _f(1, "restarts of cosine_with_restarts")
    lr_scheduler_power: float = _f(1.0, "power of polynomial")
    lr_scheduler_args: list[str] | None = _f(None, 'list of "key=value" for the scheduler')
    # training (add_training_arguments)
    output_dir: str | None = _f(None, "folder for the LoRA files")
    output_name: str | None = _f(None, "file name without extension (kohya: 'last')")
    save_model_as: str | None = _f("safetensors", "safetensors (ckpt/pt: legacy)")
    save_precision: str | None = _f(None, "float, fp16 or bf16 (default: the training precision)")
    save_every_n_epochs: int | None = _f(None, "save a file every N epochs")
    save_every_n_steps: int | None = _f(None, "save a file every N steps")
    save_last_n_epochs: int | None = _f(None, "keep only the last N epoch files")
    save_last_n_steps: int | None = _f(None, "keep only the files of the last N steps")
    save_state: bool = _f(False, "save the training state (for resume) with each file")
    save_state_on_train_end: bool = _f(False, "save the training state at the end")
    resume: str | None = _f(None, "state folder to resume from")
    train_batch_size: int = _f(1, "images per step")
    max_train_steps: int = _f(1600, "total steps (max_train_epochs wins when set)")
    max_train_epochs: int | None = _f(None, "total epochs")
    gradient_accumulation_steps: int = _f(1, "steps accumulated per optimizer step")
    max_data_loader_n_workers: int = _f(8, "data loader worker processes")
    persistent_data_loader_workers: bool = _f(False, "keep data loader workers between epochs")
    seed: int | None = _f(None, "random seed")
    gradient_checkpointing: bool = _f(False, "recompute activations to save memory")
    mixed_precision: str = _f("no", "no, fp16 or bf16")
    full_fp16: bool = _f(False, "fp16 weights and gradients (needs mixed_precision fp16)")
    full_bf16: bool = _f(False, "bf16 weights and gradients (needs mixed_precision bf16)")
    xformers: bool = _f(False, "xformers attention")
    sdpa: bool = _f(False, "PyTorch scaled-dot-product attention")
    mem_eff_attn: bool = _f(False, "memory-efficient attention")
    clip_skip: int | None = _f(None, "use the output of the Nth-from-last CLIP layer (2 for anime models)")
    max_token_length: int | None = _f(None, "None (75), 150 or 225 tokens")
    noise_offset: float | None = _f(None, "noise offset (0.05-0.1 for darker/brighter images)")
    multires_noise_iterations: int | None = _f(None, "multires (pyramid) noise iterations (6-10)")
    multires_noise_discount: float = _f(0.3, "multires noise discount")
    min_snr_gamma: float | None = _f(None, "min-SNR loss weighting gamma (5 recommended)")
    zero_terminal_snr: bool = _f(False, "rescale the noise schedule to zero terminal SNR")
    min_timestep: int | None = _f(None, "smallest timestep sampled (default 0)")
    max_timestep: int | None = _f(None, "largest timestep sampled + 1 (default 1000)")
    lowram: bool = _f(False, "load the model into VRAM directly (low system RAM)")
    highvram: bool = _f(False, "keep everything in VRAM")
    # samples
    sample_prompts: str | None = _f(None, "prompt file (--n --s --l --d --w --h options)")
    sample_every_n_epochs: int | None = _f(None, "sample images every N epochs")
    sample_every_n_steps: int | None = _f(None, "sample images every N steps")
    sample_at_first: bool = _f(False, "sample images before training")
    sample_sampler: str = _f("ddim", ", ".join(SAMPLE_SAMPLERS))
    # logging
    logging_dir: str | None = _f(None, "folder for TensorBoard logs")
    log_with: str | None = _f(None, "tensorboard, wandb or all")
    log_prefix: str | None = _f(None, "prefix of the log folder name")

    def effective_output_name(self) -> str:
        return self.output_name or "last"

    def effective_network_dim(self) -> int:
        return self.network_dim if self.network_dim is not None else 4

    def learning_rates(self) -> tuple[float | None, float | None, float]:
        """(unet_lr, text_encoder_lr, learning_rate) as kohya's prepare_optimizer_params takes them.

        None falls back to learning_rate there; 0 leaves that part frozen. A list of Text Encoder
        rates (SDXL, one per encoder) gives its first, as kohya does for single-rate networks.
        ``network_train_unet_only`` / ``network_train_text_encoder_only`` freeze the other part.
        """

        te = self.text_encoder_lr
        if isinstance(te, list):
            te = te[0] if te else None
        unet = self.unet_lr
        if self.network_train_unet_only:
            te = 0.0
        if self.network_train_text_encoder_only:
            unet = 0.0
        return unet, te, self.learning_rate


# Keys that always go into a saved config, so the file reads as a complete recipe.
ESSENTIAL_KEYS = (
    "pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "dataset_config", "output_dir",
    "output_name", "network_module", "network_dim", "network_alpha", "learning_rate", "unet_lr",
    "text_encoder_lr", "optimizer_type", "lr_scheduler", "train_batch_size", "max_train_steps",
    "max_train_epochs", "resolution", "mixed_precision", "save_model_as", "save_every_n_epochs",
    "caption_extension", "seed",
)

# Old spellings kohya still accepts: name -> (new key, value transform).
_LEGACY_KEYS = {
    "caption_extention": "caption_extension",  # kohya's historical misspelling
}

# sd-scripts options Kiln does not have, with kohya's default: a key at its default changes nothing
# (kohya_ss writes many of them), any other value is a feature Kiln would silently skip.
KOHYA_ONLY_DEFAULTS: dict[str, Any] = {
    "tokenizer_cache_dir": None, "lr_scheduler_type": "", "lr_decay_steps": 0, "fused_backward_pass": False,
    "lr_scheduler_timescale": None, "lr_scheduler_min_lr_ratio": None, "huggingface_repo_id": None,
    "huggingface_repo_type": None, "huggingface_path_in_repo": None, "huggingface_token": None,
    "huggingface_repo_visibility": None, "save_state_to_huggingface": False, "resume_from_huggingface": False,
    "async_upload": False, "save_n_epoch_ratio": None, "save_last_n_epochs_state": None,
    "save_last_n_steps_state": None, "torch_compile": False, "dynamo_backend": "inductor", "fp8_base": False,
    "ddp_timeout": None, "ddp_gradient_as_bucket_view": False, "ddp_static_graph": False,
    "log_tracker_name": None, "wandb_run_name": None, "log_tracker_config": None, "wandb_api_key": None,
    "log_config": False, "noise_offset_random_strength": False, "ip_noise_gamma": None,
    "ip_noise_gamma_random_strength": False, "adaptive_noise_scale": None, "loss_type": "l2",
    "huber_schedule": "snr", "huber_c": 0.1, "huber_scale": 1.0, "config_file": None, "output_config": False,
    "conditioning_data_dir": None, "masked_loss": False, "cache_info": False, "secondary_separator": None,
    "enable_wildcard": False, "debug_dataset": False, "skip_cache_check": False, "resize_interpolation": None,
    "token_warmup_min": 1, "token_warmup_step": 0, "alpha_mask": False, "dataset_class": None,
    "in_json": None, "dataset_repeats": 1, "use_safetensors": False, "cpu_offload_checkpointing": False,
    "no_metadata": False, "fp8_base_unet": False, "base_weights": None, "base_weights_multiplier": None,
    "skip_until_initial_step": False, "initial_epoch": None, "initial_step": None, "validation_seed": None,
    "validation_split": 0.0, "validate_every_n_steps": None, "validate_every_n_epochs": None,
    "max_validation_steps": None, "use_8bit_adam": False, "use_lion_optimizer": False,
    "debiased_estimation_loss": False, "weighted_captions": False, "scale_v_pred_loss_like_noise_pred": False,
    "v_pred_like_loss": None, "deepspeed": False, "zero_stage": 2, "offload_optimizer_device": None,
    "offload_optimizer_nvme_path": None, "offload_param_device": None, "offload_param_nvme_path": None,
}


# ---------------------------------------------------------------- type checking

def _name(value: Any) -> str:
    return repr(value)


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise KilnError(f"{key}: {_name(value)} is not true or false")


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise KilnError(f"{key}: {_name(value)} is not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
        if number.is_integer():
            return int(number)
    raise KilnError(f"{key}: {_name(value)} is not a whole number")


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise KilnError(f"{key}: {_name(value)} is not a number")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise KilnError(f"{key}: {_name(value)} is not a number") from None
    else:
        raise KilnError(f"{key}: {_name(value)} is not a number")
    if not math.isfinite(number):
        raise KilnError(f"{key}: {_name(value)} is not a finite number")
    return number


def _as_str(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise KilnError(f"{key}: {_name(value)} is not text", hint=f'write it in quotes: {key} = "..."')


def _as_str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        # kohya_ss keeps optimizer_args as one space-separated string in its GUI settings.
        return value.split()
    if isinstance(value, list | tuple):
        return [_as_str(f"{key}[{i}]", item) for i, item in enumerate(value)]
    raise KilnError(f"{key}: {_name(value)} is not a list of \"key=value\" texts",
                    hint=f'e.g. {key} = ["weight_decay=0.01"]')


def _as_warmup(key: str, value: Any) -> int | float:
    if isinstance(value, str) and value.strip().endswith("%"):
        return _as_float(key, value.strip()[:-1]) / 100.0
    number = _as_float(key, value)
    if number < 0:
        raise KilnError(f"{key}: {_name(value)} is negative", hint="use 0 for no warmup")
    # kohya's int_or_float: >= 1 is a number of steps, below 1 a ratio of the run.
    if number >= 1:
        if not number.is_integer():
            raise KilnError(f"{key}: {_name(value)} is neither whole steps nor a ratio below 1")
        return int(number)
    return number if isinstance(value, float) or "." in str(value) else int(number)


def _as_float_or_list(key: str, value: Any) -> float | list[float]:
    if isinstance(value, list | tuple):
        numbers = [_as_float(f"{key}[{i}]", item) for i, item in enumerate(value)]
        return numbers[0] if len(numbers) == 1 else numbers
    return _as_float(key, value)


def _pair_text(key: str, value: Any, kind: type) -> str:
    """resolution / face_crop_aug_range: a number, "a,b", or [a, b] -> kohya's "a,b" text."""

    if isinstance(value, bool):
        raise KilnError(f"{key}: {_name(value)} is not a size")
    if isinstance(value, int | float):
        parts = [value]
    elif isinstance(value, list | tuple):
        parts = list(value)
    elif isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",")]
    else:
        raise KilnError(f"{key}: {_name(value)} is not a size")
    convert = _as_int if kind is int else _as_float
    if not 1 <= len(parts) <= 2:
        raise KilnError(f"{key}: {_name(value)} should be one number or two separated by a comma",
                        hint='e.g. "512" or "512,768"')
    try:
        numbers = [convert(key, p) for p in parts]
    except KilnError:
        raise KilnError(f"{key}: {_name(value)} is not " + ("W,H in pixels" if kind is int else "two numbers"),
                        hint='e.g. "512" or "512,768"' if kind is int else 'e.g. "2.0,4.0"') from None
    if any(n <= 0 for n in numbers):
        raise KilnError(f"{key}: {_name(value)} must be positive")
    return ",".join(str(n) for n in numbers)


def parse_resolution(text: str | int | list | tuple | None, label: str = "resolution") -> tuple[int, int] | None:
    """kohya's resolution text ("512" or "512,768") -> (width, height)."""

    if text is None:
        return None
    numbers = [int(n) for n in _pair_text(label, text, int).split(",")]
    return (numbers[0], numbers[-1])


def parse_face_crop_aug_range(text: str | list | tuple | None,
                              label: str = "face_crop_aug_range") -> tuple[float, float] | None:
    if text is None:
        return None
    numbers = [float(n) for n in _pair_text(label, text, float).split(",")]
    if len(numbers) != 2:
        raise KilnError(f"{label}: {text!r} needs two numbers", hint='e.g. "2.0,4.0"')
    return (numbers[0], numbers[1])


_SPECIAL = {
    "resolution": lambda k, v: _pair_text(k, v, int),
    "face_crop_aug_range": lambda k, v: _pair_text(k, v, float),
    "lr_warmup_steps": _as_warmup,
    "text_encoder_lr": _as_float_or_list,
}


def _hint_parts(hint: Any) -> tuple[bool, list]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = list(typing.get_args(hint))
        nullable = type(None) in args
        return nullable, [a for a in args if a is not type(None)]
    return False, [hint]


def coerce_value(key: str, value: Any, hint: Any, label: str | None = None) -> Any:
    """``value`` checked/converted to the field type ``hint``; KilnError names ``label`` (default key)."""

    label = label or key
    nullable, kinds = _hint_parts(hint)
    if value is None:
        if nullable:
            return None
        raise KilnError(f"{label}: a value is required")
    if nullable and value == "":
        return None  # kohya_ss writes "" for unset options (reg_data_dir = "", vae = "")
    if key in _SPECIAL:
        result = _SPECIAL[key](label, value)
    else:
        kind = kinds[0]
        if kind is bool:
            result = _as_bool(label, value)
        elif kind is int:
            result = _as_int(label, value)
        elif kind is float:
            result = _as_float(label, value)
        elif kind is str:
            result = _as_str(label, value)
        elif typing.get_origin(kind) is list:
            result = _as_str_list(label, value)
        elif typing.get_origin(kind) is tuple:
            result = value
        else:  # pragma: no cover - every field type is handled above
            raise TypeError(f"no checker for {key}: {hint}")
    if key == "optimizer_type" and not result.strip():
        result = "AdamW"
    if key in CHOICES:
        choices = CHOICES[key]
        if isinstance(result, str):
            match = [c for c in choices if isinstance(c, str) and c.lower() == result.lower()]
            result = match[0] if match else result
        if key == "lr_scheduler" and isinstance(result, str) and result.startswith("adafactor:"):
            result = "adafactor"
        if result not in choices:
            shown = ", ".join("unset" if c is None else str(c) for c in choices)
            raise KilnError(f"{label}: {_name(result)} is not one of {shown}")
    return result


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ---------------------------------------------------------------- TrainConfig load / save

def flatten_sections(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """kohya's read_config_from_file: top-level tables are sections whose keys merge into one dict.

    Returns the flat dict and the keys that are tables nested deeper (unusable, so reported).
    """

    flat: dict[str, Any] = {}
    nested: list[str] = []
    for name, value in data.items():
        if not isinstance(value, dict):
            flat[name] = value
            continue
        for key, inner in value.items():
            if isinstance(inner, dict):
                nested.append(f"{name}.{key}")
            else:
                flat[key] = inner
    return flat, nested


def config_from_dict(values: dict[str, Any], *, base: TrainConfig | None = None) -> tuple[TrainConfig, list[str]]:
    """A TrainConfig from flat or sectioned ``values`` (on top of ``base``) and the unknown keys."""

    flat, unknown = flatten_sections(values)
    hints = _hints(TrainConfig)
    config = copy.deepcopy(base) if base is not None else TrainConfig()
    updates: dict[str, Any] = {}
    # kohya's pre-optimizer_type switches, translated as its get_optimizer does.
    for switch, optimizer in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion")):
        if switch in flat:
            if _as_bool(switch, flat.pop(switch)):
                if flat.get("optimizer_type"):
                    raise KilnError(f"{switch} and optimizer_type are both set",
                                    hint=f"remove {switch}; optimizer_type = \"{optimizer}\" says the same")
                updates["optimizer_type"] = optimizer
    for key, value in flat.items():
        target = _LEGACY_KEYS.get(key, key)
        if target not in hints:
            unknown.append(key)
            continue
        updates[target] = coerce_value(target, value, hints[target])
    for key, value in updates.items():
        setattr(config, key, value)
    check_config(config)
    return config, unknown


def check_config(config: TrainConfig) -> None:
    """Contradictions kohya refuses too (its asserts), as messages naming the keys."""

    if config.network_train_unet_only and config.network_train_text_encoder_only:
        raise KilnError("network_train_unet_only and network_train_text_encoder_only are both true",
                        hint="set at most one of them")
    if config.full_fp16 and config.mixed_precision != "fp16":
        raise KilnError(f"full_fp16 needs mixed_precision = \"fp16\" (it is {config.mixed_precision!r})")
    if config.full_bf16 and config.mixed_precision != "bf16":
        raise KilnError(f"full_bf16 needs mixed_precision = \"bf16\" (it is {config.mixed_precision!r})")
    if config.full_fp16 and config.full_bf16:
        raise KilnError("full_fp16 and full_bf16 are both true", hint="choose one")
    positive = ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "max_train_epochs",
                "network_dim", "save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs",
                "save_last_n_steps", "sample_every_n_epochs", "sample_every_n_steps", "bucket_reso_steps",
                "min_bucket_reso", "max_bucket_reso", "lr_scheduler_num_cycles", "vae_batch_size")
    for key in positive:
        value = getattr(config, key)
        if value is not None and value < 1:
            raise KilnError(f"{key}: {value} must be 1 or more")
    for key in ("keep_tokens", "max_data_loader_n_workers", "caption_dropout_every_n_epochs", "clip_skip",
                "multires_noise_iterations", "min_timestep", "max_timestep"):
        value = getattr(config, key)
        if value is not None and value < 0:
            raise KilnError(f"{key}: {value} must not be negative")
    for key in ("caption_dropout_rate", "caption_tag_dropout_rate", "network_dropout"):
        value = getattr(config, key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise KilnError(f"{key}: {value} must be between 0 and 1")
    for key in ("learning_rate", "unet_lr", "max_grad_norm", "prior_loss_weight", "network_alpha"):
        value = getattr(config, key)
        if value is not None and value < 0:
            raise KilnError(f"{key}: {value} must not be negative")
    if config.min_bucket_reso > config.max_bucket_reso:
        raise KilnError(f"min_bucket_reso {config.min_bucket_reso} is larger than max_bucket_reso "
                        f"{config.max_bucket_reso}")


def _read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KilnError("config file not found", path=path) from None
    except OSError as exc:
        raise KilnError(f"cannot read the config file ({exc.strerror or exc})", path=path) from None
    try:
        text = raw.decode("utf-8-sig")  # Windows editors add a BOM
    except UnicodeDecodeError:
        raise KilnError("the config file is not UTF-8 text", path=path, hint="save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KilnError(f"not valid TOML: {exc}", path=path,
                        hint='Windows paths need single quotes or doubled backslashes: \'C:\\data\' or "C:\\\\data"') from None


def load_config(path: str | Path, *, base: TrainConfig | None = None) -> tuple[TrainConfig, list[str]]:
    """Read an sd-scripts ``--config_file`` TOML. Returns the config and the keys Kiln does not know."""

    data = _read_toml(path)
    try:
        return config_from_dict(data, base=base)
    except KilnError as exc:
        if exc.path is None:
            raise KilnError(exc.problem, path=path, hint=exc.hint) from None
        raise


def unknown_key_messages(keys: list[str], source: str | Path | dict[str, Any] | None = None) -> list[str]:
    """One line per unknown key: an sd-scripts option Kiln lacks (harmless at its default) or a typo.

    ``source`` (the TOML path or its dict) lets a key left at kohya's default read as harmless.
    """

    values = _read_toml(source) if isinstance(source, str | Path) else source
    flat = flatten_sections(values)[0] if values else {}
    known = list(_hints(TrainConfig))
    messages = []
    for key in keys:
        if key in KOHYA_ONLY_DEFAULTS:
            if key in flat and flat[key] in (KOHYA_ONLY_DEFAULTS[key], None, "", []):
                messages.append(f"{key}: an sd-scripts option Kiln does not have; at its default here, no effect")
            else:
                messages.append(f"{key}: an sd-scripts option Kiln does not have; it is NOT applied")
        else:
            close = difflib.get_close_matches(key, known, n=1)
            tip = f" (did you mean {close[0]}?)" if close else ""
            messages.append(f"{key}: not an option Kiln or sd-scripts knows{tip}; ignored")
    return messages
