"""Quick settings: the options ``quicksettings_list`` names, beside the checkpoint at the top of
every page (the WebUI's quicksettings; ``sd_model_checkpoint`` is the row's own dropdown).

Each one is a copy of its Settings-tab control, built from that control's own arguments, so it
reads and checks values exactly as the tab does. A change is stored at once (config.json, with
the Settings tab's checks) and mirrored into the tab. The list is read when the page is built,
as in the WebUI: a change to it shows at the next start.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import gradio as gr

from ui.settings import apply_settings

if TYPE_CHECKING:
    from core.engine import Engine

log = logging.getLogger(__name__)
CHECKPOINT_KEY = "sd_model_checkpoint"


def quick_keys(engine: Engine, fields: dict[str, Any]) -> list[str]:
    """The listed settings that get a control (the checkpoint has its own; unknown ones are logged)."""
    keys = []
    for key in engine.settings.options.quicksettings_list:
        if key == CHECKPOINT_KEY:
            continue
        if key not in fields:
            log.warning("quicksettings_list: %s has no control in the Settings tab; not shown at the top", key)
            continue
        keys.append(key)
    return keys


def build_quicksettings(row: Any, engine: Engine, fields: dict[str, Any]) -> dict[str, Any]:
    """Add the quick settings to the top ``row``; returns them by option key."""
    quick: dict[str, Any] = {}
    with row:
        for key in quick_keys(engine, fields):
            source = fields[key]
            args = {**source.constructor_args, "value": getattr(engine.settings.options, key),
                    "elem_id": f"quicksettings-{key}", "scale": 2, "min_width": 160}
            quick[key] = type(source)(**args)
    return quick


def apply_quick_setting(engine: Engine, key: str, value: Any) -> tuple[Any, Any]:
    """Store one quick setting; both controls then show the stored value (the old one, with a
    warning saying why, when the change is refused)."""
    _changed, rejected = apply_settings(engine, {key: value})
    if rejected:
        gr.Warning(rejected[0])
    stored = getattr(engine.settings.options, key)
    return stored, stored


def wire_quicksettings(quick: dict[str, Any], fields: dict[str, Any], engine: Engine) -> None:
    for key, component in quick.items():
        component.change(partial(apply_quick_setting, engine, key), inputs=[component],
                         outputs=[fields[key], component], show_progress="hidden")
