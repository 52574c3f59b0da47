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
