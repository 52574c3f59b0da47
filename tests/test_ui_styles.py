"""The Styles row's handlers and the Settings tab's saving options (ui/styles.py, ui/settings_saving.py)."""

from __future__ import annotations

import pytest

from core.cli import parse_flags
from core.engine import Engine
from core.settings import Settings
from ui.settings import apply_settings
from ui.styles import STRINGS, delete_style, materialize, save_style


@pytest.fixture()
def engine(tmp_path):
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    settings.paths.ensure_dirs()
    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nFrame,photo of {prompt},lowres\n",
                                         encoding="utf-8")
    return Engine(settings)


def test_apply_button_writes_the_styles_into_the_prompts_and_clears_the_choice(engine):
    assert materialize(engine, "a cat", "ugly", ["Frame"]) == ("photo of a cat", "ugly, lowres", [])


def test_editor_saves_and_deletes_in_styles_csv(engine, tmp_path):
    message = save_style(engine, " Neon ", "{prompt}, neon lights", "")
    assert "Neon" in message and "styles.csv" in message
    assert engine.styles.get("Neon").prompt == "{prompt}, neon lights"
    assert (tmp_path / "styles.csv.bak").exists()
    assert "Neon" in delete_style(engine, "Neon") and engine.styles.get("Neon") is None
    assert save_style(engine, "  ", "x", "") == "Give the style a name first."


def test_frozen_settings_keep_styles_as_they_are(engine):
    engine.settings.flags.freeze_settings = True
    assert "frozen" in save_style(engine, "New", "x", "") and engine.styles.get("New") is None


def test_settings_tab_stores_saving_options_and_names_bad_ones(engine):
    changed, rejected = apply_settings(engine, {"samples_format": "webp", "jpeg_quality": 90.0, "save_txt": True,
                                                "directories_filename_pattern": "[date]/[model_name]"})
    assert sorted(changed) == ["directories_filename_pattern", "jpeg_quality", "samples_format", "save_txt"]
    o = engine.settings.options
    assert (o.samples_format, o.jpeg_quality, o.save_txt) == ("webp", 90, True) and not rejected
    changed, rejected = apply_settings(engine, {"directories_filename_pattern": "../x"})
    assert changed == [] and "directories_filename_pattern" in rejected[0]


def test_every_string_has_its_chinese_text():
    from ui.settings_saving import STRINGS as SAVING

    for table in (STRINGS, SAVING):
        assert set(table["en"]) == set(table["zh-CN"]) and all(table["zh-CN"].values())
