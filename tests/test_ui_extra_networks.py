"""The Extra networks panel: picker tags, strings, and the panel built inside a gr.Blocks over fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from core.cli import parse_flags
from core.engine import Engine
from core.networks.catalog import CHECKPOINT, HYPERNETWORK, LORA, NetworkCatalog
from core.settings import Settings
from ui.common import CSS
from ui.extra_networks import (
    COMPACT_TILE_FILE,
    PICKER_ROWS,
    STRINGS,
    _Thumbnails,
    apply_picker,
    build_extra_networks,
    gallery_item,
    i18n_tables,
    picker_tags,
    tr,
)
from ui.i18n import EN

ZH_REQUEST = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"})


def test_picker_tags_from_enabled_rows():
    values = [True, "kiln_style_v1", 0.8, False, "kiln_loha", 1.0, True, "None", 1.0, True, "kiln_lokr", 1.0,
              True, "kiln_ia3", 0.0]
    assert picker_tags(values) == "<lora:kiln_style_v1:0.8> <lora:kiln_lokr:1>"
    assert picker_tags([True, "x", -0.35000000000000003]) == "<lora:x:-0.35>"
    assert picker_tags([]) == "" and picker_tags([True, None, 1.0]) == ""


def test_apply_picker_appends_to_the_prompt():
    assert apply_picker("a cat, ", True, "style", 0.75) == "a cat, <lora:style:0.75>"
    assert apply_picker("", True, "style", 1) == "<lora:style:1>"
    assert apply_picker("a cat", False, "style", 1) == "a cat"


def test_strings_have_both_languages_and_unknown_keys_fail():
    tables = i18n_tables()
    assert set(tables["en"]) == set(tables["zh-CN"]) == set(STRINGS["zh-CN"])
    assert all(tables["zh-CN"][k] for k in tables["zh-CN"])
    with pytest.raises(KeyError):
        tr("Not a string of this module")
    # Keys shared with ui/i18n.py must mean the same in English.
    assert all(EN[k] == tables["en"][k] for k in set(EN) & set(tables["en"]))


@pytest.fixture()
def engine(fixture_models_dir, tmp_path) -> Engine:
    data = tmp_path / "data"
    for sub in ("models/Stable-diffusion", "models/Lora", "models/hypernetworks", "embeddings"):
        shutil.copytree(fixture_models_dir / sub, data / sub)
    settings = Settings.from_flags(parse_flags(["--data-dir", str(data), "--ckpt", "tiny-sd1.safetensors"]), data)
    settings.paths.builtin_checkpoint_dir = data / "models" / "Stable-diffusion"
    return Engine(settings)


def test_cards_without_a_picture_are_compact_tiles_naming_file_and_type(engine):
    catalog, thumbs = NetworkCatalog(engine), _Thumbnails()
    lora_dir = Path(engine.paths.lora_dir)
    Image.new("RGB", (960, 1280), "red").save(lora_dir / "kiln_locon.preview.png")
    (lora_dir / "kiln_ia3.png").write_bytes(b"not a png")  # a preview that cannot be read
    items = {card.name: gallery_item(card, thumbs.get(card.preview), thumbs.tile()) for card in catalog.cards(LORA)}
    # A card with a picture: the picture (at most twice the card size), captioned with the name.
    picture, caption = items["kiln_locon"]
    assert isinstance(picture, Image.Image) and picture.size == (384, 512) and caption == "kiln_locon"
    # Without one (or with an unreadable one): the compact tile, its caption the type over the name.
    for name, kind in (("kiln_style_v1", "LoRA"), ("kiln_peft", "LoRA"), ("kiln_loha", "LyCORIS"),
                       ("kiln_ia3", "LyCORIS")):
        tile, caption = items[name]
        assert Path(tile).name == COMPACT_TILE_FILE and Path(tile).is_file()
        assert caption == f"{kind}\n{name}"
    # The type follows the browser's language; an error mark stays on the name.
    [hypernet] = catalog.cards(HYPERNETWORK)
    assert gallery_item(hypernet, None, thumbs.tile(), ZH_REQUEST)[1] == "超网络 (Hypernetwork)\nkiln_hypernet"
    checkpoint = catalog.cards(CHECKPOINT)[0]
    checkpoint.error = "cannot read"
    assert gallery_item(checkpoint, None, thumbs.tile(), ZH_REQUEST)[1] == "模型\n⚠ tiny-sd1.safetensors"
    # The page's CSS finds the tiles by that file name.
    assert f'img[src$="{COMPACT_TILE_FILE}"]' in CSS


def _fn(demo: gr.Blocks, name: str):
    return next(block_fn.fn for block_fn in demo.fns.values() if getattr(block_fn.fn, "__name__", "") == name)


def test_panel_builds_and_lists_the_fixture_cards(engine):
    with gr.Blocks() as demo:
        prompt = gr.Textbox(elem_id="txt2img-prompt")
        c = build_extra_networks(engine, prompt)
    assert set(c["galleries"]) == {"checkpoint", "lora", "embedding", "hypernetwork"}
    assert len(c["picker_inputs"]) == 3 * PICKER_ROWS and len(c["picker_models"]) == PICKER_ROWS
    assert isinstance(c["picker_inputs"][0], gr.Checkbox) and isinstance(c["picker_inputs"][2], gr.Slider)
    assert (c["picker_inputs"][2].minimum, c["picker_inputs"][2].maximum, c["picker_inputs"][2].step) == (-1, 2, 0.05)
    # The page-load / Refresh handler: per tab (gallery items, [(name, tag)]), then picker choices.
    out = _fn(demo, "refresh")("", "name", "Ascending")
    checkpoint_items, checkpoint_shown, lora_items, lora_shown = out[:4]
    assert [name for name, _ in checkpoint_shown] == ["tiny-sd1.safetensors", "tiny-sd2-v.safetensors",
                                                      "tiny-sdxl.safetensors"]
    assert dict(lora_shown)["kiln_style_v1"] == "<lora:kiln_style:1>"
    assert [caption.split("\n")[-1] for _, caption in lora_items] == [name for name, _ in lora_shown]
    assert all(Path(tile).name == COMPACT_TILE_FILE for tile, _ in lora_items)  # no previews: compact tiles
    assert out[-1]["choices"][0] == "None" and "kiln_style_v1" in out[-1]["choices"]
    filtered = _fn(demo, "show")("hypernet", "name", "Descending")
    assert filtered[1] == [] and filtered[7] == [("kiln_hypernet", "<hypernet:kiln_hypernet:1>")]


def test_saving_notes_changes_the_card_text(engine):
    with gr.Blocks() as demo:
        prompt = gr.Textbox(elem_id="txt2img-prompt")
        build_extra_networks(engine, prompt)
    save = _fn(demo, "save")
    out = save("kiln_style_v1", "", "sls, red hair", 0.7, "try 0.6-0.8", "", "name", "Ascending", None)
    assert "Saved." in out[0]
    lora_shown = out[4]
    assert dict(lora_shown)["kiln_style_v1"] == "<lora:kiln_style:0.7> sls, red hair"
    notes = Path(engine.paths.lora_dir) / "kiln_style_v1.json"
    assert notes.is_file() and "try 0.6-0.8" in notes.read_text(encoding="utf-8")


def test_shared_keys_do_not_override_the_main_chinese_table():
    from ui.i18n import ZH_CN

    zh = i18n_tables()["zh-CN"]
    assert {k: zh[k] for k in set(zh) & set(ZH_CN)} == {k: ZH_CN[k] for k in set(zh) & set(ZH_CN)}


def test_the_order_radio_takes_its_shown_label_for_its_value():
    """At page load a Chinese browser could send "升序" for "Ascending" (an error toast, no cards)."""
    from ui.extra_networks import ASCENDING, DESCENDING, order_radio, tr

    radio = order_radio(choices=[(tr(ASCENDING), ASCENDING), (tr(DESCENDING), DESCENDING)], value=ASCENDING)
    assert [radio.preprocess(v) for v in ("升序", "降序", ASCENDING, DESCENDING)] == [ASCENDING, DESCENDING,
                                                                                    ASCENDING, DESCENDING]
