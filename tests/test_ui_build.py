"""The UI builds over a real Engine without any checkpoint, and its pure handlers work."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from core.cli import parse_flags
from core.engine import Engine
from core.jobs import JobQueue
from core.settings import Settings


@pytest.fixture()
def engine(tmp_path: Path) -> Engine:
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    settings.paths.ensure_dirs()
    return Engine(settings)


def _by_elem_id(demo: gr.Blocks) -> dict[str, object]:
    return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def test_ui_builds_without_a_checkpoint(engine):
    import ui

    queue = JobQueue()
    try:
        demo = ui.build(engine, queue)
    finally:
        queue.shutdown()
    assert isinstance(demo, gr.Blocks)
    blocks = _by_elem_id(demo)
    for elem_id in ("kiln-checkpoint", "kiln-refresh-checkpoints", "txt2img-prompt", "txt2img-negative-prompt",
                    "txt2img-generate", "txt2img-interrupt", "txt2img-skip", "txt2img-sampler", "txt2img-scheduler",
                    "txt2img-steps", "txt2img-width", "txt2img-height", "txt2img-seed", "txt2img-random-seed",
                    "txt2img-reuse-seed", "txt2img-hires", "txt2img-gallery", "txt2img-preview", "txt2img-progress",
                    "pnginfo-image", "pnginfo-send-to-txt2img", "settings-apply", "settings-sd-vae",
                    "settings-clip-skip", "settings-randn-source"):
        assert elem_id in blocks, elem_id
    gallery = blocks["txt2img-gallery"]
    assert gallery.format == "png"  # WebP would drop the PNG "parameters" text
    assert blocks["txt2img-sampler"].value == "DPM++ 2M" and blocks["txt2img-scheduler"].value == "Automatic"
    assert blocks["txt2img-steps"].value == 20 and blocks["txt2img-width"].value == 512
    assert blocks["kiln-checkpoint"].choices == []
    notice = blocks["kiln-no-checkpoint"].value
    assert str(engine.paths.ckpt_dir) in notice


def test_apply_settings_saves_changes_atomically(engine):
    from ui.settings import apply_settings

    changed, rejected = apply_settings(engine, {"sd_vae": "None", "CLIP_stop_at_last_layers": 2.0,
                                                "randn_source": "GPU", "samples_save": True,
                                                "sd_model_checkpoint": None})
    assert changed == ["sd_vae", "CLIP_stop_at_last_layers"] and rejected == []
    saved = json.loads(engine.paths.config_path.read_text(encoding="utf-8"))
    assert saved["sd_vae"] == "None" and saved["CLIP_stop_at_last_layers"] == 2
    assert isinstance(saved["CLIP_stop_at_last_layers"], int)
    assert apply_settings(engine, {"sd_vae": "None"}) == ([], [])
    _changed, rejected = apply_settings(engine, {"randn_source": "TPU"})
    assert rejected == ["randn_source"]


def test_send_to_txt2img_values_fit_the_dropdowns():
    from ui.pnginfo import txt2img_values

    parsed = {"Prompt": "a cat", "Negative prompt": "dog", "Steps": "13", "Sampler": "DPM++ 2M Karras",
              "Schedule type": "Automatic", "CFG scale": "4.5", "Seed": "99", "Size-1": "320", "Size-2": "256",
              "Clip skip": "2", "Variation seed": "5", "Variation seed strength": "0.1", "Hires upscale": "1.5",
              "Hires upscaler": "R-ESRGAN 4x+", "Hires steps": "6", "Denoising strength": "0.45",
              "Hires sampler": "Use same sampler", "Hires resize-1": 0, "Hires resize-2": 0}
    choices = {"sampler_name": ["DPM++ 2M", "Euler a"], "scheduler": ["Automatic", "Karras"],
               "hr_upscaler": ["Latent", "None", "Lanczos"], "hr_sampler_name": ["Use same sampler", "DPM++ 2M"],
               "hr_scheduler": ["Use same scheduler", "Karras"]}
    values = txt2img_values(parsed, choices, {})
    assert values["sampler_name"] == "DPM++ 2M" and values["scheduler"] == "Karras"
    assert (values["steps"], values["cfg_scale"], values["seed"]) == (13, 4.5, 99)
    assert (values["width"], values["height"], values["clip_skip"]) == (320, 256, 2)
    assert (values["subseed"], values["subseed_strength"]) == (5, 0.1)
    assert values["enable_hr"] is True and values["hr_scale"] == 1.5 and values["hr_second_pass_steps"] == 6
    assert values["denoising_strength"] == 0.45 and values["hr_sampler_name"] == "Use same sampler"
    assert "hr_upscaler" not in values  # a model upscaler this install lacks stays as it was


def test_token_counter_uses_the_shipped_tokenizer(engine):
    from ui.common import token_counter_html

    assert token_counter_html(engine, "", 20) == ""
    assert token_counter_html(engine, "a red circle", 20) == "3/75"
    assert token_counter_html(engine, ", ".join(["red circle"] * 40), 20).endswith("/150")


def _defaults(tab) -> dict[str, object]:
    return {name: component.value for name, component in tab.fields.items()}


def test_generate_without_a_checkpoint_shows_where_to_put_one(engine):
    from ui.txt2img import build_txt2img_tab, generate_updates

    queue = JobQueue()
    try:
        with gr.Blocks():
            tab = build_txt2img_tab(engine)
        updates = list(generate_updates(tab, engine, queue, dict(_defaults(tab), prompt="x", steps=2)))
    finally:
        queue.shutdown()
    error = updates[-1][tab.error]
    assert "kiln-error" in error and str(engine.paths.ckpt_dir) in error


def test_generate_with_a_model_streams_previews_then_the_gallery(tmp_path):
    from core.models.fixtures import write_tiny_checkpoint
    from ui.txt2img import build_txt2img_tab, generate_updates

    write_tiny_checkpoint(tmp_path, "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    settings.paths.ensure_dirs()
    settings.options.show_progress_every_n_steps = 1
    engine = Engine(settings)
    queue = JobQueue(preview_every=1)
    try:
        with gr.Blocks():
            tab = build_txt2img_tab(engine)
        values = dict(_defaults(tab), prompt="a red circle", steps=3, width=64, height=64, seed=11,
                      batch_size=2, sampler_name="Euler")
        updates = list(generate_updates(tab, engine, queue, values))
    finally:
        queue.shutdown()
    assert any(u.get(tab.preview) is not None for u in updates[1:-1])  # live preview while sampling
    assert any("Step " in u.get(tab.progress, "") for u in updates)
    final = updates[-1]
    images = final[tab.gallery]
    assert len(images) == 2 and final[tab.seeds_state] == [11, 12]
    assert images[0].info["parameters"].startswith("a red circle\nSteps: 3, Sampler: Euler")
    assert "Steps: 3" in final[tab.infotext]
    saved = list((tmp_path / "outputs" / "txt2img-images").rglob("*.png"))
    assert len(saved) == 2  # samples_save is on by default


def test_checkpoint_dropdown_value_is_one_of_its_choices(tmp_path):
    """Titles gain "[hash]" once a file is hashed; value and choices must agree on a fresh folder."""
    import ui
    from core.models.fixtures import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path, "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    settings.paths.ensure_dirs()
    queue = JobQueue()
    try:
        demo = ui.build(Engine(settings), queue)
    finally:
        queue.shutdown()
    blocks = _by_elem_id(demo)
    for elem_id in ("kiln-checkpoint", "settings-checkpoint"):
        dropdown = blocks[elem_id]
        assert dropdown.value and dropdown.value in [value for _label, value in dropdown.choices], elem_id
