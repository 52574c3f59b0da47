"""A TrainConfig written back as TOML (only what differs from kohya's defaults, plus the
essentials), atomically; and the key list ``python -m core.training --help`` prints."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from core.fileio import atomic_write_text
from core.training.config import ESSENTIAL_KEYS, TrainConfig, _hints, check_config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes (\" \\ \n \t \uXXXX) are all valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def config_to_toml(config: TrainConfig) -> str:
    """Flat sd-scripts TOML: keys that differ from kohya's defaults plus the essentials that are set."""

    defaults = TrainConfig()
    lines = ["# Kiln training config — sd-scripts (kohya) argument names; train_network.py --config_file reads it"]
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if value is None:
            continue  # TOML has no null: an absent key is kohya's default (None)
        if value == getattr(defaults, f.name) and f.name not in ESSENTIAL_KEYS:
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_config(config: TrainConfig, path: str | Path) -> Path:
    check_config(config)
    return atomic_write_text(path, config_to_toml(config))


def config_help() -> str:
    """Every key with its type and default, for ``python -m core.training --help``."""

    hints = _hints(TrainConfig)
    rows = []
    for f in fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        hint = hints[f.name]
        type_text = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        shown = "unset" if default is None else _toml_value(default)
        line = f"  {f.name} ({type_text}, default {shown})"
        if f.metadata.get("help"):
            line += f": {f.metadata['help']}"
        rows.append(line)
    return "Config keys (sd-scripts names; TOML flat or in sections):\n" + "\n".join(rows) + "\n"
