"""Every text the built page shows goes through the translation tables, and each key it uses
has its 简体中文 entry (only example values such as a placeholder "sls" stay as they are)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr

from core.cli import parse_flags
from core.engine import Engine
from core.jobs import JobQueue
from core.settings import Settings

# Example values shown as placeholders: file-name tags, a kohya name, a job id; the same in any language.
LANGUAGE_NEUTRAL = {"sls", "1girl", "[seed]", "[date]", "job-12", "masterpiece, {prompt}, film grain"}
I18N = "__i18n__"


def _texts(demo: gr.Blocks):
    for block in demo.blocks.values():
        for attr in ("label", "info", "placeholder"):
            yield block, attr, getattr(block, attr, None)
        if isinstance(block, (gr.Button, gr.Markdown)):
            yield block, "value", block.value


def test_every_ui_text_is_translated(tmp_path: Path):
    import ui

    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path)]), tmp_path)
    settings.paths.ensure_dirs()
    queue = JobQueue()
    try:
        demo = ui.build(Engine(settings), queue)
    finally:
        queue.shutdown()
    zh = ui.page_options()["i18n"].translations["zh-CN"]
    untranslated, missing_zh, keys = [], [], set()
    for block, attr, value in _texts(demo):
        text = str(value) if value is not None else ""
        if text.startswith(I18N):
            key = json.loads(text[len(I18N):])["key"]
            keys.add(key)
            if key not in zh:
                missing_zh.append((block.elem_id, key))
        elif re.search("[A-Za-z]{3,}", text) and text not in LANGUAGE_NEUTRAL:
            untranslated.append((type(block).__name__, block.elem_id, attr, text[:60]))
    assert len(keys) > 300  # the whole page was walked (every tab's labels)
    assert untranslated == []
    assert missing_zh == []


def test_a_key_has_one_chinese_text_across_the_tables():
    """The tables merge into one per locale: a key two tabs translate differently would show the
    last table's text on both (as "Batch size" once did), so each key has a single 简体中文 text."""
    import ui
    from ui import i18n

    tables = [i18n.LOCALES, ui.i18n_tables(), ui.dataset_i18n_tables(), ui.EXTRAS_STRINGS, ui.TRAIN_STRINGS, ui.XYZ_STRINGS, ui.SHEET_STRINGS,
              ui.MERGER_STRINGS, ui.STYLES_STRINGS, ui.SAVING_STRINGS, ui.SAMPLER_STRINGS, ui.INFOTEXT_STRINGS,
              ui.EXTENSIONS_STRINGS]
    seen: dict[str, str] = {}
    clashes = []
    for table in tables:
        for key, text in table["zh-CN"].items():
            if key in seen and seen[key] != text:
                clashes.append((key, seen[key], text))
            seen[key] = text
    assert clashes == []


def test_the_seeds_terms():
    """The WebUI's established Chinese terms for its main labels."""
    zh = __import__("ui").page_options()["i18n"].translations["zh-CN"]
    expected = {"txt2img": "文生图", "img2img": "图生图", "Train": "训练", "Preprocess": "图像预处理",
                "Prompt": "提示词", "Negative prompt": "反向提示词", "Sampling method": "采样方法 (Sampler)",
                "Sampling steps": "迭代步数 (Steps)", "CFG Scale": "提示词相关性 (CFG Scale)", "Seed": "随机种子 (Seed)",
                "Hires. fix": "高分辨率修复 (Hires. fix)", "Create embedding": "创建嵌入式模型", "Interrupt": "中止"}
    assert {key: zh[key] for key in expected} == expected
