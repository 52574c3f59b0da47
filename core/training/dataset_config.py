"""kohya's ``--dataset_config`` TOML: ``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``.

Values fall back subset → dataset → general → the training config → kohya's default, as
sd-scripts' config_util does; unknown keys are listed with where they sit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import KilnError
from core.training.config import (
    TrainConfig,
    _as_float,
    _hints,
    _read_toml,
    coerce_value,
    parse_face_crop_aug_range,
    parse_resolution,
)


@dataclass
class SubsetSpec:
    """One [[datasets.subsets]] entry (kohya's DreamBoothSubsetParams / FineTuningSubsetParams)."""

    image_dir: str | None = None
    num_repeats: int = 1
    class_tokens: str | None = None
    is_reg: bool = False
    metadata_file: str | None = None
    caption_extension: str = ".caption"
    caption_separator: str = ","
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    enable_wildcard: bool = False
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    face_crop_aug_range: tuple[float, float] | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0.0
    alpha_mask: bool = False
    cache_info: bool = False


@dataclass
class DatasetSpec:
    """One [[datasets]] entry (kohya's DreamBoothDatasetParams) and its subsets."""

    resolution: tuple[int, int] | None = None
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    network_multiplier: float = 1.0
    prior_loss_weight: float = 1.0
    subsets: list[SubsetSpec] = field(default_factory=list)

    @property
    def is_finetuning(self) -> bool:
        return bool(self.subsets) and all(s.metadata_file for s in self.subsets)


@dataclass
class DatasetConfig:
    datasets: list[DatasetSpec]
    unknown: list[str]  # "datasets[0].subsets[1].foo" — keys kohya's schema would reject


# Where kohya's schema allows each key (config_util.ConfigSanitizer).
_SUBSET_ONLY = {"image_dir", "is_reg", "metadata_file", "alpha_mask"}
_SUBSET_INHERITABLE = {f.name for f in fields(SubsetSpec)} - _SUBSET_ONLY
_DATASET_KEYS = {f.name for f in fields(DatasetSpec)} - {"subsets", "prior_loss_weight"}
# Training-config names that feed the fallback chain under another name (kohya's argparse mapping).
_ARG_TO_DATASET = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats"}


def _check_spec_value(cls, key: str, value: Any, label: str) -> Any:
    hint = _hints(cls)[key]
    if key == "resolution":
        return parse_resolution(value, label)
    if key == "face_crop_aug_range":
        return parse_face_crop_aug_range(value, label)
    if key == "token_warmup_step":
        return _as_float(label, value)
    return coerce_value(key, value, hint, label=label)


def _fallbacks_from_config(config: TrainConfig | None) -> dict[str, Any]:
    if config is None:
        return {}
    values: dict[str, Any] = {}
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if value is not None:
            values[_ARG_TO_DATASET.get(f.name, f.name)] = value
    values["resolution"] = parse_resolution(config.resolution)
    values["face_crop_aug_range"] = parse_face_crop_aug_range(config.face_crop_aug_range)
    return {k: v for k, v in values.items() if v is not None}


def _search(key: str, chain: list[dict[str, Any]], default: Any) -> Any:
    # kohya's BlueprintGenerator.search_value: the first level that sets the key (not None) wins.
    for level in chain:
        value = level.get(key)
        if value is not None:
            return value
    return default


def dataset_config_from_dict(data: dict[str, Any], *, config: TrainConfig | None = None) -> DatasetConfig:
    """kohya's --dataset_config dict -> DatasetConfig (inheritance general -> dataset -> subset)."""

    unknown: list[str] = []
    top_known = {"general", "datasets"}
    unknown += [k for k in data if k not in top_known]
    general_raw = data.get("general", {})
    if not isinstance(general_raw, dict):
        raise KilnError("[general] must be a table")
    general = _checked_level(general_raw, "general", _DATASET_KEYS | _SUBSET_INHERITABLE, unknown)
    datasets_raw = data.get("datasets", [])
    if not isinstance(datasets_raw, list) or not all(isinstance(d, dict) for d in datasets_raw):
        raise KilnError("datasets must be [[datasets]] tables")
    if not datasets_raw:
        raise KilnError("the dataset config has no [[datasets]]", hint="add [[datasets]] with [[datasets.subsets]]")
    argparse_level = _fallbacks_from_config(config)
    datasets: list[DatasetSpec] = []
    for i, dataset_raw in enumerate(datasets_raw):
        where = f"datasets[{i}]"
        subsets_raw = dataset_raw.get("subsets", [])
        if not isinstance(subsets_raw, list) or not all(isinstance(s, dict) for s in subsets_raw):
            raise KilnError(f"{where}.subsets must be [[datasets.subsets]] tables")
        if not subsets_raw:
            raise KilnError(f"{where} has no [[datasets.subsets]]", hint="add one with image_dir = '...'")
        level = _checked_level({k: v for k, v in dataset_raw.items() if k != "subsets"}, where,
                               _DATASET_KEYS | _SUBSET_INHERITABLE, unknown)
        subsets = []
        for j, subset_raw in enumerate(subsets_raw):
            here = f"{where}.subsets[{j}]"
            sub = _checked_level(subset_raw, here, _SUBSET_INHERITABLE | _SUBSET_ONLY, unknown)
            if not sub.get("image_dir") and not sub.get("metadata_file"):
                raise KilnError(f"{here}: image_dir is missing", hint="every subset needs image_dir = 'folder'")
            chain = [sub, level, general, argparse_level]
            values = {f.name: _search(f.name, chain if f.name not in _SUBSET_ONLY else [sub], f.default)
                      for f in fields(SubsetSpec)}
            subsets.append(SubsetSpec(**values))
        if len({bool(s.metadata_file) for s in subsets}) > 1:
            raise KilnError(f"{where}: DreamBooth-style subsets (image_dir) and fine-tuning subsets "
                            "(metadata_file) cannot be mixed in one dataset", hint="split them into two [[datasets]]")
        chain = [level, general, argparse_level]
        values = {f.name: _search(f.name, chain, f.default) for f in fields(DatasetSpec) if f.name != "subsets"}
        datasets.append(DatasetSpec(**values, subsets=subsets))
    return DatasetConfig(datasets=datasets, unknown=unknown)


def _checked_level(raw: dict[str, Any], where: str, allowed: set[str], unknown: list[str]) -> dict[str, Any]:
    cls_for = {name: SubsetSpec for name in _SUBSET_INHERITABLE | _SUBSET_ONLY}
    cls_for.update({name: DatasetSpec for name in _DATASET_KEYS})
    checked: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            unknown.append(f"{where}.{key}")
            continue
        checked[key] = _check_spec_value(cls_for[key], key, value, f"{where}.{key}")
    return checked


def load_dataset_config(path: str | Path, *, config: TrainConfig | None = None) -> DatasetConfig:
    """Read kohya's --dataset_config TOML; ``config`` supplies the training-config fallbacks."""

    data = _read_toml(path)
    try:
        return dataset_config_from_dict(data, config=config)
    except KilnError as exc:
        if exc.path is None:
            raise KilnError(exc.problem, path=path, hint=exc.hint) from None
        raise
