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


def _build_page(engine: Engine) -> gr.Blocks:
    import ui

    queue = JobQueue()
    try:
        return ui.build(engine, queue)
    finally:
        queue.shutdown()


def test_ui_builds_without_a_checkpoint(engine):
    from core.generation.img2img_batch import PNG_INFO_FIELDS

    demo = _build_page(engine)
    assert isinstance(demo, gr.Blocks)
    blocks = _by_elem_id(demo)
    for elem_id in ("kiln-checkpoint", "kiln-refresh-checkpoints", "txt2img-prompt", "txt2img-negative-prompt",
                    "txt2img-generate", "txt2img-interrupt", "txt2img-skip", "txt2img-sampler", "txt2img-scheduler",
                    "txt2img-steps", "txt2img-width", "txt2img-height", "txt2img-seed", "txt2img-random-seed",
                    "txt2img-reuse-seed", "txt2img-hires", "txt2img-gallery", "txt2img-preview", "txt2img-progress",
                    "txt2img-send-to-img2img", "txt2img-send-to-inpaint",
                    "img2img-prompt", "img2img-generate", "img2img-interrupt", "img2img-skip", "img2img-image",
                    "img2img-inpaint-editor", "img2img-upload-image", "img2img-upload-mask",
                    "img2img-batch-input-dir", "img2img-batch-output-dir", "img2img-batch-mask-dir",
                    "img2img-batch-use-png-info", "img2img-batch-png-info-fields", "img2img-sampler",
                    "img2img-scheduler", "img2img-steps", "img2img-width", "img2img-height", "img2img-batch-count",
                    "img2img-batch-size", "img2img-cfg", "img2img-seed", "img2img-random-seed", "img2img-reuse-seed",
                    "img2img-gallery", "img2img-preview", "img2img-progress", "img2img-error", "img2img-infotext",
                    "img2img-send-to-img2img", "img2img-send-to-inpaint",
                    "pnginfo-image", "pnginfo-send-to-txt2img", "pnginfo-send-to-img2img", "pnginfo-send-to-inpaint",
                    "settings-apply", "settings-sd-vae", "settings-clip-skip", "settings-randn-source"):
        assert elem_id in blocks, elem_id
    # img2img comes right after txt2img, with the WebUI's sub-tabs in its order.
    tab_ids = [b.id for b in demo.blocks.values() if isinstance(b, gr.Tab) and b.elem_id and b.elem_id.startswith("tab-")]
    assert tab_ids[:2] == ["txt2img", "img2img"]
    sub_tabs = [b.id for b in demo.blocks.values() if isinstance(b, gr.Tab) and (b.elem_id or "").startswith("img2img-mode")]
    assert sub_tabs == ["img2img", "inpaint", "inpaint_upload", "batch"]
    # The WebUI's UI defaults (not its API defaults).
    assert blocks["img2img-resize-mode"].value == "Just resize"
    assert blocks["img2img-masked-content"].value == "original"
    assert blocks["img2img-inpaint-area"].value == "Whole picture"
    assert blocks["img2img-mask-mode"].value == "Inpaint masked"
    assert (blocks["img2img-padding"].value, blocks["img2img-mask-blur"].value) == (32, 4)
    assert blocks["img2img-denoising"].value == 0.75
    assert blocks["img2img-mask-controls"].visible is False  # shown on the inpaint tabs only
    png_info_fields = blocks["img2img-batch-png-info-fields"]
    assert [value for _label, value in png_info_fields.choices] == list(PNG_INFO_FIELDS)
    assert png_info_fields.value == []
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
    assert len(rejected) == 1 and rejected[0].startswith("randn_source: 'TPU' is not one of")  # says why


def test_settings_tab_has_the_sampler_parameters_and_stores_them(engine):
    import gradio as gr

    from ui.settings import apply_settings, build_settings_tab

    with gr.Blocks():
        tab = build_settings_tab(engine)
    for key in ("eta_ddim", "eta_ancestral", "eta_noise_seed_delta", "s_churn", "sigma_min", "sigma_max", "rho",
                "beta_dist_alpha", "always_discard_next_to_last_sigma", "sgm_noise_multiplier", "s_min_uncond",
                "sd_checkpoints_limit", "extra_networks_default_multiplier", "add_model_hash_to_info",
                "uni_pc_variant", "uni_pc_skip_type", "uni_pc_order", "uni_pc_lower_order_final", "show_progress_type"):
        assert key in tab.fields, key
    changed, rejected = apply_settings(engine, {"sigma_max": 5.5, "sgm_noise_multiplier": True, "rho": 0.0})
    assert changed == ["sigma_max", "sgm_noise_multiplier"] and rejected == []
    saved = json.loads(engine.paths.config_path.read_text(encoding="utf-8"))
    assert saved["sigma_max"] == 5.5 and saved["sgm_noise_multiplier"] is True
    assert engine.run_options().sigma_max == 5.5  # the next job runs with it
    _changed, rejected = apply_settings(engine, {"s_min_uncond": 20.0})
    assert len(rejected) == 1 and rejected[0].startswith("s_min_uncond:")


def test_quicksettings_sit_in_the_top_row_and_store_at_once(engine):
    from ui.quicksettings import apply_quick_setting

    engine.settings.options.quicksettings_list = ["sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae",
                                                  "no_such_setting"]
    demo = _build_page(engine)
    blocks = _by_elem_id(demo)
    clip, vae = blocks["quicksettings-CLIP_stop_at_last_layers"], blocks["quicksettings-sd_vae"]
    assert isinstance(clip, gr.Slider) and (clip.minimum, clip.maximum) == (1, 12)
    assert isinstance(vae, gr.Dropdown) and "Automatic" in [c[1] for c in vae.choices]
    top = blocks["kiln-top-row"]
    inside = {getattr(b, "elem_id", None) for b in demo.blocks.values()
              if _is_inside(b, top)}
    assert {"kiln-checkpoint", "quicksettings-CLIP_stop_at_last_layers", "quicksettings-sd_vae"} <= inside
    assert "quicksettings-no_such_setting" not in blocks
    assert apply_quick_setting(engine, "CLIP_stop_at_last_layers", 2) == (2, 2)
    assert json.loads(engine.paths.config_path.read_text(encoding="utf-8"))["CLIP_stop_at_last_layers"] == 2
    assert apply_quick_setting(engine, "CLIP_stop_at_last_layers", 40) == (2, 2)  # refused: the stored value stays


def _is_inside(block, ancestor) -> bool:
    parent = getattr(block, "parent", None)
    while parent is not None:
        if parent is ancestor:
            return True
        parent = getattr(parent, "parent", None)
    return False


def test_quicksettings_list_is_checked(engine):
    from core.errors import InvalidParameterError
    from core.settings import Options

    with pytest.raises(InvalidParameterError) as caught:
        engine.settings.check_user_changes({"quicksettings_list": ["sd_vae", "sd_unet"]})
    assert "sd_unet" in caught.value.message
    options, warnings = Options.from_json({"quicksettings_list": ["sd_model_checkpoint", "sd_vae", "sd_unet"]})
    assert options.quicksettings_list == ["sd_model_checkpoint", "sd_vae"] and "sd_unet" in warnings[0]


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
    values = txt2img_values(parsed, choices)
    assert values["sampler_name"] == "DPM++ 2M" and values["scheduler"] == "Karras"
    assert (values["steps"], values["cfg_scale"], values["seed"]) == (13, 4.5, 99)
    assert (values["width"], values["height"], values["clip_skip"]) == (320, 256, 2)
    assert (values["subseed"], values["subseed_strength"]) == (5, 0.1)
    assert values["enable_hr"] is True and values["hr_scale"] == 1.5 and values["hr_second_pass_steps"] == 6
    assert values["denoising_strength"] == 0.45 and values["hr_sampler_name"] == "Use same sampler"
    assert "hr_upscaler" not in values  # a model upscaler this install lacks stays as it was
    aliased = txt2img_values({**parsed, "Sampler": "k_euler_a", "Schedule type": "Karras"}, choices)
    assert (aliased["sampler_name"], aliased["scheduler"]) == ("Euler a", "Karras")
    assert "sampler_name" not in txt2img_values({**parsed, "Sampler": "Euler Dy Karras"}, choices)


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
        # 20 steps: long enough for a progress poll (every 0.3 s) to land while it samples.
        values = dict(_defaults(tab), prompt="a red circle", steps=20, width=64, height=64, seed=11,
                      batch_size=2, sampler_name="Euler")
        updates = list(generate_updates(tab, engine, queue, values))
    finally:
        queue.shutdown()
    assert any(u.get(tab.preview) is not None for u in updates[1:-1])  # live preview while sampling
    assert any("Step " in u.get(tab.progress, "") for u in updates)
    final = updates[-1]
    images = final[tab.gallery]
    assert len(images) == 2 and final[tab.seeds_state] == [11, 12]
    assert images[0].info["parameters"].startswith("a red circle\nSteps: 20, Sampler: Euler")
    assert "Steps: 20" in final[tab.infotext]
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


# ------------------------------------------------------------------------ img2img --
def _picture(size: tuple[int, int] = (64, 64)):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "black")
    w, h = size
    ImageDraw.Draw(image).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill="red")
    return image


def _left_half(size: tuple[int, int] = (64, 64)):
    from PIL import Image, ImageDraw

    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill=255)
    return mask


def _img2img_tab(engine):
    from ui.img2img import build_img2img_tab

    with gr.Blocks():
        return build_img2img_tab(engine)


def test_img2img_page_values_become_img2img_params(engine):
    from core.generation.img2img import Img2ImgParams
    from ui.img2img import img2img_params

    tab = _img2img_tab(engine)
    values = dict(_defaults(tab), prompt="a red circle", steps=6, width=64, height=64, seed=5)
    picture = _picture()
    p = img2img_params(values, "img2img", init_image=picture)
    assert isinstance(p, Img2ImgParams) and p.init_images == [picture] and p.mask is None
    assert (p.prompt, p.steps, p.width, p.height, p.seed, p.denoising_strength) == ("a red circle", 6, 64, 64, 5, 0.75)
    # The WebUI's UI defaults arrive as its API values: Just resize, original, Whole picture, 32, blur 4.
    assert (p.resize_mode, p.inpainting_fill, p.inpaint_full_res, p.inpaint_full_res_padding) == (0, 1, False, 32)
    assert (p.mask_blur_x, p.mask_blur_y, p.inpainting_mask_invert) == (4, 4, 0)

    changed = dict(values, resize_mode="Just resize (latent upscale)", inpainting_fill="latent noise",
                   inpaint_full_res="Only masked", inpainting_mask_invert="Inpaint not masked", mask_blur=9,
                   inpaint_full_res_padding=12, denoising_strength=0.3)
    mask = _left_half()
    p = img2img_params(changed, "inpaint_upload", upload_image=picture, upload_mask=mask)
    assert p.mask is mask and p.init_images == [picture]
    assert (p.resize_mode, p.inpainting_fill, p.inpaint_full_res, p.inpaint_full_res_padding) == (3, 2, True, 12)
    assert (p.mask_blur_x, p.mask_blur_y, p.inpainting_mask_invert, p.denoising_strength) == (9, 9, 1, 0.3)
    # Another sub-tab's pictures are not used: img2img mode never gets a mask.
    assert img2img_params(changed, "img2img", init_image=picture, upload_mask=mask).mask is None


def test_inpaint_editor_strokes_are_the_mask(engine):
    import numpy as np
    from PIL import Image, ImageDraw

    from core.generation.masking import binary_mask
    from ui.img2img import img2img_params

    tab = _img2img_tab(engine)
    picture = _picture().convert("RGBA")
    stroke = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    ImageDraw.Draw(stroke).rectangle((8, 8, 23, 23), fill=(255, 255, 255, 255))
    editor = {"background": picture, "layers": [stroke], "composite": picture}
    p = img2img_params(dict(_defaults(tab), width=64, height=64), "inpaint", editor=editor)
    assert p.init_images == [picture]
    repaint = np.asarray(binary_mask(p.mask)) > 0  # what the engine reads from it
    expected = np.zeros((64, 64), dtype=bool)
    expected[8:24, 8:24] = True
    assert (repaint == expected).all()
    # No stroke: a blank mask (the engine then repaints nothing, or falls back to img2img for Only masked).
    blank = img2img_params(dict(_defaults(tab), width=64, height=64), "inpaint",
                           editor={"background": picture, "layers": [], "composite": picture})
    assert not np.asarray(binary_mask(blank.mask)).any()


@pytest.mark.parametrize("mode, pictures, field", [
    ("img2img", {}, "init_images"),
    ("inpaint", {"editor": None}, "init_images"),
    ("inpaint_upload", {"upload_image": "picture"}, "mask"),
    ("inpaint_upload", {"upload_image": "picture", "upload_mask": "small mask"}, "mask"),
])
def test_img2img_bad_input_is_named_in_the_error_box(engine, mode, pictures, field):
    from ui.img2img import generate_updates

    given = {"picture": _picture(), "small mask": _left_half((32, 32))}
    pictures = {name: given.get(value, value) for name, value in pictures.items()}
    tab = _img2img_tab(engine)
    queue = JobQueue()
    try:
        updates = list(generate_updates(tab, engine, queue, dict(_defaults(tab), width=64, height=64), mode, pictures))
    finally:
        queue.shutdown()
    assert len(updates) == 1  # nothing was queued
    error = updates[0][tab.error]
    assert "kiln-error" in error and f"{field}: " in error, error
    if "small mask" in pictures.values():
        assert "32x32" in error and "64x64" in error


@pytest.fixture()
def model_engine(tmp_path):
    from core.models.fixtures import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path, "sd1")
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    settings.paths.ensure_dirs()
    settings.options.show_progress_every_n_steps = 1
    return Engine(settings)


def test_img2img_and_inpaint_upload_with_a_model(model_engine, tmp_path):
    from ui.img2img import generate_updates

    tab = _img2img_tab(model_engine)
    queue = JobQueue(preview_every=1)
    # 30 steps at 0.3 are 10 sampler steps: long enough for a progress poll (0.3 s) to see one.
    values = dict(_defaults(tab), prompt="a red circle", steps=30, width=64, height=64, seed=11,
                  sampler_name="Euler", denoising_strength=0.3)
    try:
        img2img = list(generate_updates(tab, model_engine, queue, values, "img2img", {"init_image": _picture()}))
        inpaint = list(generate_updates(tab, model_engine, queue, values, "inpaint_upload",
                                        {"upload_image": _picture(), "upload_mask": _left_half()}))
    finally:
        queue.shutdown()
    for updates in (img2img, inpaint):
        final = updates[-1]
        assert len(final[tab.gallery]) == 1 and final[tab.seeds_state] == [11]
        assert "Denoising strength: 0.3" in final[tab.infotext]
        assert final[tab.gallery][0].info["parameters"].startswith("a red circle\nSteps: 30, Sampler: Euler")
        assert any("Step " in u.get(tab.progress, "") for u in updates)
    assert "Mask blur" not in img2img[-1][tab.infotext]
    assert "Mask blur: 4" in inpaint[-1][tab.infotext]
    # Unmasked pixels are the input's (the WebUI's overlay), masked ones were repainted.
    result = inpaint[-1][tab.gallery][0]
    assert result.getpixel((48, 32)) == _picture().getpixel((48, 32))
    saved = list((tmp_path / "outputs" / "img2img-images").rglob("*.png"))
    assert len(saved) == 2


def test_img2img_batch_counts_pictures_and_saves_to_the_img2img_folder(model_engine, tmp_path):
    from ui.img2img import generate_updates

    folder = tmp_path / "batch-in"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        _picture().save(folder / name)
    tab = _img2img_tab(model_engine)
    values = dict(_defaults(tab), prompt="a red circle", steps=4, width=64, height=64, seed=3, sampler_name="Euler",
                  denoising_strength=0.5)
    batch = {"input_dir": str(folder), "output_dir": "", "mask_dir": "", "use_png_info": False,
             "png_info_fields": []}
    queue = JobQueue()
    try:
        updates = list(generate_updates(tab, model_engine, queue, values, "batch", {}, batch))
        wrong = list(generate_updates(tab, model_engine, queue, values, "batch", {},
                                      dict(batch, input_dir=str(tmp_path / "nowhere"))))
    finally:
        queue.shutdown()
    assert any("/3 images" in u.get(tab.progress, "") and "ETA" in u.get(tab.progress, "") for u in updates)
    final = updates[-1]
    assert len(final[tab.gallery]) == 3 and "Denoising strength: 0.5" in final[tab.infotext]
    written = sorted(p.name for p in (tmp_path / "outputs" / "img2img-images").rglob("*.png"))
    assert written == ["a.png", "b.png", "c.png"]  # an empty output directory: the img2img folder
    assert "Saved 3 images to" in final[tab.error] and "kiln-notice" in final[tab.error]
    assert "input_dir: " in wrong[-1][tab.error] and "nowhere" in wrong[-1][tab.error]


def test_send_to_img2img_and_inpaint_fill_the_tab_and_switch_to_it(engine):
    from ui.img2img import send_updates

    tab = _img2img_tab(engine)
    tabs = gr.Tabs()
    parsed = {"Prompt": "a cat", "Negative prompt": "dog", "Steps": "13", "Sampler": "Euler a", "CFG scale": "4.5",
              "Seed": "99", "Size-1": "320", "Size-2": "256", "Denoising strength": "0.45", "Clip skip": "2"}
    picture = _picture()
    clip_skip = gr.Slider()
    update = send_updates(tab, tabs, picture, parsed, "inpaint", engine, clip_skip)
    f = tab.fields
    assert (update[f["prompt"]], update[f["negative_prompt"]], update[f["steps"]]) == ("a cat", "dog", 13)
    assert (update[f["sampler_name"]], update[f["cfg_scale"]], update[f["seed"]]) == ("Euler a", 4.5, 99)
    assert (update[f["width"]], update[f["height"]], update[f["denoising_strength"]]) == (320, 256, 0.45)
    assert update[clip_skip] == 2
    assert update[tab.inpaint_editor]["background"] is picture and update[tab.inpaint_editor]["layers"] == []
    assert tab.init_image not in update
    assert update[tabs].selected == "img2img" and update[tab.mode_tabs].selected == "inpaint"
    assert update[tab.mode] == "inpaint" and update[tab.mask_controls].visible is True
    update = send_updates(tab, tabs, picture, parsed, "img2img", engine, clip_skip)
    assert update[tab.init_image] is picture and tab.inpaint_editor not in update
    assert update[tab.mode_tabs].selected == "img2img" and update[tab.mask_controls].visible is False


def test_send_to_buttons_are_wired_under_both_galleries_and_in_png_info(engine):
    demo = _build_page(engine)
    blocks = _by_elem_id(demo)
    by_id = {b._id: b for b in demo.blocks.values()}
    clicks: dict[str, set[str]] = {}
    for fn in demo.fns.values():
        for block_id, event in fn.targets:
            target = by_id.get(block_id)
            if event == "click" and getattr(target, "elem_id", None):
                clicks.setdefault(target.elem_id, set()).update(o.elem_id for o in fn.outputs if o.elem_id)
    for source in ("txt2img", "img2img", "pnginfo"):
        to_img2img = clicks[f"{source}-send-to-img2img"]
        to_inpaint = clicks[f"{source}-send-to-inpaint"]
        for outputs in (to_img2img, to_inpaint):
            assert {"kiln-tabs", "img2img-mode-tabs", "img2img-image", "img2img-inpaint-editor", "img2img-prompt",
                    "img2img-seed", "img2img-denoising", "settings-clip-skip"} <= outputs, (source, outputs)
    assert "kiln-tabs" in clicks["pnginfo-send-to-txt2img"]
    assert isinstance(blocks["img2img-mode-tabs"], gr.Tabs)


def test_gallery_send_takes_the_selected_picture():
    from ui.img2img import gallery_path

    gallery = [("/tmp/a.png", None), ("/tmp/b.png", "caption")]
    assert gallery_path(gallery, 1) == "/tmp/b.png"
    assert gallery_path(gallery, None) == "/tmp/a.png" and gallery_path(gallery, 7) == "/tmp/b.png"
    assert gallery_path(None, 0) is None and gallery_path([], 0) is None


def test_generation_progress_polls_at_the_jobs_refresh_period(monkeypatch):
    import types

    import ui.common as common
    from core.generation.run_options import RunOptions

    seen: list[float] = []

    def recording(queue, job, interval=common.POLL_SECONDS):
        seen.append(interval)
        job.done_event.wait(30)
        yield from ()

    monkeypatch.setattr(common, "watch_job", recording)
    tab = types.SimpleNamespace(error="error", preview="preview", progress="progress", gallery="gallery",
                                infotext="infotext", html_info="html")
    queue = JobQueue()
    try:
        for _ in common.submit_generation(tab, queue, lambda _ctx: None, "test",
                                          RunOptions(live_preview_refresh_period=1500)):
            pass
    except Exception:  # the fake tab lacks what the finished job's update needs; the poll is what counts
        pass
    finally:
        queue.shutdown()
    assert seen == [1.5]
