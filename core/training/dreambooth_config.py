"""DreamBooth / fine-tune settings by sd-scripts' ``train_db.py`` / ``fine_tune.py`` argument names.

One flat dataclass, as TrainConfig is for LoRA: a kohya TOML (flat or in sections) loads through
the same coercion rules (``core.training.config.coerce_value``), so a value of the wrong type is
an error naming its key. Kiln's additions for prior preservation (``num_class_images``,
``class_prompt``...) are the names of the WebUI's Dreambooth extension; the LoRA extraction
options are those of sd-scripts' ``extract_lora_from_models.py`` with an ``extract_`` prefix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import KilnError
from core.training.config import _hints, _read_toml, coerce_value, flatten_sections, parse_resolution
from core.training.optimizers import OPTIMIZER_TYPES, canonical_optimizer_name

MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("float", "fp16", "bf16")


@dataclass
class DreamBoothConfig:
    pretrained_model_name_or_path: str | None = None
    train_data_dir: str = ""  # kohya folders: <repeats>_<instance> <class>/
    reg_data_dir: str | None = None  # <repeats>_<class>/ regularisation (class) pictures
    output_dir: str | None = None  # None: models/Stable-diffusion
    output_name: str = "last"
    resolution: str = "512,512"
    caption_extension: str = ".caption"
    enable_bucket: bool = False
    flip_aug: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = 0
    # Learning: train_db.py has learning_rate and learning_rate_te; fine_tune.py train_text_encoder.
    learning_rate: float = 2e-6
    learning_rate_te: float | None = None  # None: learning_rate
    train_text_encoder: bool = False
    optimizer_type: str = "AdamW"
    optimizer_args: list[str] = field(default_factory=list)
    use_8bit_adam: bool = False  # kohya's old switch: AdamW8bit where bitsandbytes and CUDA are there
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_train_steps: int = 1600
    max_train_epochs: int | None = None
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    xformers: bool = False
    cache_latents: bool = True
    seed: int = 0
    clip_skip: int = 1
    noise_offset: float = 0.0
    min_snr_gamma: float | None = None
    use_ema: bool = False  # save the exponential moving average of the U-Net instead of its last weights
    ema_decay: float = 0.9999
    # Prior preservation
    prior_loss_weight: float = 1.0
    num_class_images: int = 0  # per reg folder; missing ones are generated with the base model
    class_prompt: str | None = None  # None: each reg folder's class tokens
    class_negative_prompt: str = ""
    class_infer_steps: int = 20
    class_guidance_scale: float = 7.0
    class_sampler: str = "Euler a"
    # Output
    save_precision: str | None = "fp16"  # float | fp16 | bf16; None: as trained
    save_every_n_epochs: int | None = None
    training_comment: str | None = None
    ignore_check_errors: bool = False
    # LoRA extraction from the trained model (extract_lora_from_models.py: dim, conv_dim, clamp_quantile)
    extract_lora: bool = False
    extract_lora_dim: int = 32
    extract_conv_dim: int | None = None
    extract_clamp_quantile: float = 0.99
    extract_lora_dir: str | None = None  # None: models/Lora

    def resolution_pair(self) -> tuple[int, int]:
        pair = parse_resolution(self.resolution)
        if pair is None:
            raise KilnError("resolution: a value is required", hint="e.g. 512 or 512,768")
        return pair

    def effective_optimizer(self) -> str:
        return "AdamW8bit" if self.use_8bit_adam and canonical_optimizer_name(self.optimizer_type) == "AdamW" \
            else canonical_optimizer_name(self.optimizer_type)


def check_dreambooth_config(config: DreamBoothConfig) -> None:
    """The checks that need no files: each problem names its key."""
    if not str(config.train_data_dir).strip():
        raise KilnError("train_data_dir: no instance folder given", hint="the folder holding 10_sks dog/ and the like")
    if config.learning_rate <= 0:
        raise KilnError(f"learning_rate: must be above 0, not {config.learning_rate}")
    if config.learning_rate_te is not None and config.learning_rate_te < 0:
        raise KilnError(f"learning_rate_te: must be 0 or more, not {config.learning_rate_te}")
    name = canonical_optimizer_name(config.optimizer_type)
    if name.lower() not in OPTIMIZER_TYPES and "." not in name:
        import torch

        cls = getattr(torch.optim, name, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise KilnError(f"optimizer_type: {name!r} is not an optimizer Kiln knows",
                            hint="choose one of " + ", ".join(OPTIMIZER_TYPES.values()))
    for key, value, choices in (("mixed_precision", config.mixed_precision, MIXED_PRECISIONS),
                                ("save_precision", config.save_precision, (*SAVE_PRECISIONS, None))):
        if value not in choices:
            raise KilnError(f"{key}: {value!r} is not one of {', '.join(str(c) for c in choices if c)}")
    for key in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "extract_lora_dim"):
        if getattr(config, key) < 1:
            raise KilnError(f"{key}: must be 1 or more, not {getattr(config, key)}")
    if config.max_train_epochs is not None and config.max_train_epochs < 1:
        raise KilnError(f"max_train_epochs: must be 1 or more, not {config.max_train_epochs}")
    if config.num_class_images < 0:
        raise KilnError(f"num_class_images: must be 0 or more, not {config.num_class_images}")
    if config.num_class_images and not (config.reg_data_dir or "").strip():
        raise KilnError("reg_data_dir: num_class_images needs a regularisation folder to cache the pictures in")
    if not 0 < config.extract_clamp_quantile <= 1:
        raise KilnError(f"extract_clamp_quantile: must be in (0, 1], not {config.extract_clamp_quantile}")
    if "/" in config.output_name or "\\" in config.output_name or not config.output_name.strip():
        raise KilnError(f"output_name: {config.output_name!r} must be a plain file name")
    config.resolution_pair()


def dreambooth_config_from_dict(values: dict[str, Any], *, base: DreamBoothConfig | None = None
                                ) -> tuple[DreamBoothConfig, list[str]]:
    """A config from flat or sectioned ``values`` and the keys it does not know (never dropped silently)."""
    flat, unknown = flatten_sections(values)
    hints = _hints(DreamBoothConfig)
    config = dataclasses.replace(base) if base is not None else DreamBoothConfig()
    for key, value in flat.items():
        if key not in hints:
            unknown.append(key)
            continue
        hint = hints[key]
        if key == "resolution":
            pair = parse_resolution(value)
            value = f"{pair[0]},{pair[1]}" if pair else None
        setattr(config, key, coerce_value(key, value, hint) if key != "resolution" else value)
    check_dreambooth_config(config)
    return config, unknown


def load_dreambooth_config(path: str | Path) -> tuple[DreamBoothConfig, list[str]]:
    return dreambooth_config_from_dict(_read_toml(path))


def dreambooth_config_to_toml(config: DreamBoothConfig) -> str:
    """Flat TOML of the keys that differ from the defaults (plus the essentials)."""
    from core.training.config_toml import _toml_value

    defaults = DreamBoothConfig()
    essential = ("pretrained_model_name_or_path", "train_data_dir", "output_name", "learning_rate")
    lines = ["# Kiln DreamBooth config — sd-scripts train_db.py / fine_tune.py argument names"]
    for f in fields(DreamBoothConfig):
        value = getattr(config, f.name)
        if value is None or (value == getattr(defaults, f.name) and f.name not in essential):
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_dreambooth_config(config: DreamBoothConfig, path: str | Path) -> Path:
    from core.fileio import atomic_write_text

    check_dreambooth_config(config)
    return atomic_write_text(path, dreambooth_config_to_toml(config))
