"""Save config / Load config for a training sub-tab (LoRA, DreamBooth): the form written as a
kohya TOML, and a TOML read back into the form, the checkpoint shown by its title."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import KilnError

if TYPE_CHECKING:
    from core.engine import Engine
    from ui.dataset.strings import Strings

CHECKPOINT_FIELD = "pretrained_model_name_or_path"


def _checkpoint_entry(engine: Engine, value: str) -> Any:
    """The checkpoint a config names: by its path (the LoRA tab writes one), else as the WebUI matches names."""
    by_path = next((e for e in engine.registry.checkpoints() if str(e.path) == value), None)
    return by_path or engine.registry.find_checkpoint(value)


def wire_config_files(engine: Engine, *, strings: Strings, names: list[str], inputs: list[Any], path_box: Any,
                      save_button: Any, load_button: Any, message: Any, collect: Callable[[dict], dict[str, Any]],
                      to_config: Callable[[dict], tuple[Any, list[str]]], to_values: Callable[[Any], dict[str, Any]],
                      save: Callable[[Any, str], Any], load: Callable[[str], tuple[Any, list[str]]],
                      default_name: str) -> None:
    """``names[i]`` is the config key of ``inputs[i]``; ``collect`` turns Gradio's {component: value}
    into form values; ``to_config`` / ``to_values`` convert between the form and the config;
    ``save(config, path)`` / ``load(path)`` write and read the TOML."""

    def on_save(data: dict, request: gr.Request):
        try:
            config, _ = to_config(collect(data))
            saved = save(config, (data[path_box] or "").strip() or default_name)
        except KilnError as exc:
            return f"❌ {html.escape(exc.message)}"
        return strings.say("Config saved to {path}.", request, path=saved)

    def on_load(path, request: gr.Request):
        try:
            config, unknown = load((path or "").strip())
        except KilnError as exc:
            return [gr.update() for _ in names] + [f"❌ {html.escape(exc.message)}"]
        values = to_values(config)
        text = strings.say("Config loaded from {path}.", request, path=path)
        if unknown:
            text += " " + strings.say("Keys Kiln does not know: {keys}", request, keys=", ".join(unknown))
        updates = []
        for name in names:
            value = values[name]
            if name == CHECKPOINT_FIELD:
                entry = _checkpoint_entry(engine, str(value)) if value else None
                updates.append(gr.update(value=entry.title) if entry else gr.update())
            else:
                updates.append(gr.update(value=value))
        return updates + [text]

    save_button.click(on_save, {path_box, *inputs}, message)
    load_button.click(on_load, [path_box], [*inputs, message])
