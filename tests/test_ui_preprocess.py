"""Dataset › Preprocess and the Extras tab: they build, every string has both locales, and the
preprocess job runs on a real JobQueue with progress and Stop."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from core.cli import parse_flags
from core.dataset.preprocess import PreprocessOptions
from core.engine import Engine
from core.jobs import JobQueue
from core.settings import Settings


@pytest.fixture()
def engine(tmp_path: Path) -> Engine:
    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path / "data")]), tmp_path)
    settings.paths.ensure_dirs()
    return Engine(settings)


def test_page_has_the_preprocess_subtab_and_extras_tab(engine):
    import ui

    queue = JobQueue()
    try:
        demo = ui.build(engine, queue)
    finally:
        queue.shutdown()
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for elem_id in ("tab-dataset-preprocess", "preprocess-src", "preprocess-dst", "preprocess-width",
                    "preprocess-mode", "preprocess-flip", "preprocess-split", "preprocess-focal",
                    "preprocess-auto-size", "preprocess-upscaler", "preprocess-run", "preprocess-stop",
                    "tab-extras", "extras-image", "extras-upscaler-1", "extras-upscaler-2",
                    "extras-upscaler-2-visibility", "extras-generate", "extras-batch-src", "extras-batch-generate"):
        assert elem_id in blocks, elem_id
    assert blocks["preprocess-width"].value == 512 and blocks["preprocess-mode"].value == "crop"
    assert "None" in blocks["extras-upscaler-1"].choices[0]
    tabs = [b.id for b in demo.blocks.values() if isinstance(b, gr.Tab) and (b.elem_id or "").startswith("tab-")]
    assert tabs.index("extras") == tabs.index("img2img") + 1  # the WebUI's order


def test_strings_have_both_locales():
    from ui import extras
    from ui.dataset import preprocess

    for module in (preprocess, extras):
        assert set(module.STRINGS["en"]) == set(module.STRINGS["zh-CN"]), module.__name__
        assert all(module.STRINGS["zh-CN"].values())
    assert preprocess.STRINGS["zh-CN"]["Preprocess"] == "图像预处理"
    assert extras.STRINGS["zh-CN"]["Extras"] == "附加功能"
    assert preprocess.STRINGS["zh-CN"]["Create flipped copies"] == "创建水平翻转副本"
    assert preprocess.STRINGS["zh-CN"]["Auto focal point crop"] == "自动焦点裁切"
    with pytest.raises(KeyError):
        preprocess.tr("not a key")


def test_preprocess_job_reports_progress_and_the_result(tmp_path):
    from ui.dataset.preprocess import preprocess_job, report_html

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (80, 64), (i * 60, 0, 0)).save(src / f"{i}.png")
    (src / "bad.png").write_bytes(b"")
    queue = JobQueue()
    try:
        job = queue.submit(preprocess_job(str(src), str(tmp_path / "out"), PreprocessOptions(width=64, height=64),
                                          None, "Preprocessing"), kind="preprocess")
        report = job.wait(60)
    finally:
        queue.shutdown()
    assert len(report.written) == 3 and job.progress.total_steps == 4 and job.progress.step == 4
    page = report_html(report)
    assert "3 pictures written to" in page and "bad.png" in page and "0 bytes" in page
    zh = report_html(report, type("R", (), {"headers": {"accept-language": "zh-CN"}})())
    assert "张图片已写入" in zh


def test_stop_keeps_finished_pictures(tmp_path):
    from ui.dataset.preprocess import preprocess_job

    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64)).save(src / f"{i}.png")
    gate, release = threading.Event(), threading.Event()
    calls = []

    def tagger(_image):  # holds the first picture until Stop was pressed
        calls.append(1)
        gate.set()
        release.wait(10)
        return "tag"

    options = PreprocessOptions(width=64, height=64, caption=tagger)
    queue = JobQueue()
    try:
        job = queue.submit(preprocess_job(str(src), str(tmp_path / "out"), options, None, "x"),
                           owner="me", kind="preprocess")
        assert gate.wait(30)
        queue.stop(owner="me")
        release.set()
        report = job.wait(60)
    finally:
        queue.shutdown()
    assert report.stopped and len(report.written) == 1 and calls == [1]
    assert (tmp_path / "out" / "0.png").is_file() and (tmp_path / "out" / "0.txt").read_text() == "tag"


def test_colour_picker_values():
    from ui.dataset.preprocess import parse_colour

    assert parse_colour("#ff0000") == (255, 0, 0)
    assert parse_colour("rgba(10.4, 20.6, 30, 1)") == (10, 21, 30)
    assert parse_colour(None) == (255, 255, 255)
    with pytest.raises(ValueError):
        parse_colour("blue-ish")


def test_caption_with_a_tagger_of_the_tag_tab(engine):
    from core.dataset.taggers.fixtures import write_tiny_wd14
    from core.errors import KilnError
    from ui.dataset.preprocess import captioner_for

    assert captioner_for(engine, "", 0.35, "") is None
    write_tiny_wd14(engine.settings.paths.tagger_dir / "tiny-wd14")
    caption = captioner_for(engine, "tiny-wd14", 0.35, "shengcai")
    text = caption(Image.new("RGB", (32, 32), (220, 20, 20)))
    assert text.startswith("shengcai, ") and "red theme" in text
    with pytest.raises(KilnError):
        captioner_for(engine, "missing-model", 0.35, "")
