"""Save config / Load config of the training sub-tabs (ui/train_config_files.py), through the
handlers Gradio runs, on a real engine with a checkpoint."""

from __future__ import annotations

import json

import gradio as gr

from core.cli import parse_flags
from core.engine import Engine
from core.models.fixtures import write_tiny_checkpoint
from core.settings import Settings
from ui.train import S
from ui.train_config_files import wire_config_files


def _handlers(demo: gr.Blocks) -> dict[str, object]:
    return {f.fn.__name__: f.fn for f in demo.fns.values()}


def test_save_then_load_fills_the_form_and_shows_the_checkpoint_title(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path, "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    engine = Engine(settings)
    names = ["pretrained_model_name_or_path", "network_dim"]
    with gr.Blocks() as demo:
        inputs = [gr.Textbox(), gr.Number()]
        path_box, message = gr.Textbox(), gr.Markdown()
        save, load = gr.Button(), gr.Button()
        wire_config_files(
            engine, strings=S, names=names, inputs=inputs, path_box=path_box, save_button=save, load_button=load,
            message=message, collect=lambda data: {n: data[c] for n, c in zip(names, inputs)},
            to_config=lambda values: (values, []), to_values=lambda config: config,
            save=lambda config, path: (tmp_path / path).write_text(json.dumps(config)) and tmp_path / path,
            load=lambda path: (json.loads((tmp_path / path).read_text()), ["sdxl_only_key"]),
            default_name="train.toml")
    fns = _handlers(demo)
    said = fns["on_save"]({path_box: "", inputs[0]: str(ckpt), inputs[1]: 8}, None)
    assert "train.toml" in said and json.loads((tmp_path / "train.toml").read_text())["network_dim"] == 8
    updates = fns["on_load"]("train.toml", None)
    title = engine.registry.find_checkpoint(ckpt.name).title
    assert updates[0]["value"] == title and updates[1]["value"] == 8  # a path in the file shows as the title
    assert "sdxl_only_key" in updates[-1]  # keys Kiln does not know are named
