"""Dataset › Preprocess in headless Chromium: fill the folders, tick flip, Preprocess; the
destination holds 64×64 copies and their captions, the broken file is named, the originals
are untouched. A screenshot goes to test-artifacts/ for a human to look at."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.test_browser import ARTIFACTS, _open_tab, _open_txt2img, _set_number, browser, server  # noqa: F401

pytestmark = pytest.mark.browser


def test_preprocess_subtab_main_path(server, browser, tmp_path):  # noqa: F811
    src, dst = tmp_path / "originals", tmp_path / "train"
    src.mkdir()
    Image.new("RGB", (120, 80), (220, 40, 40)).save(src / "a.png")
    Image.new("RGB", (50, 90), (40, 40, 220)).save(src / "b.jpg")
    (src / "a.txt").write_text("sls, 1girl", encoding="utf-8")
    (src / "broken.png").write_bytes(b"")
    before = sorted((p.name, p.read_bytes()) for p in src.iterdir())

    page = _open_txt2img(server, browser)
    _open_tab(page, "tab-dataset", "Dataset")
    _open_tab(page, "tab-dataset-preprocess", "Preprocess")
    page.wait_for_selector("#preprocess-run")
    # Nested destination: refused with the reason, nothing written.
    page.locator("#preprocess-src textarea").fill(str(src))
    page.locator("#preprocess-dst textarea").fill(str(src / "out"))
    page.locator("#preprocess-run").click()
    page.wait_for_function("() => document.querySelector('#preprocess-result').innerText.includes('inside the source')")
    assert not (src / "out").exists()

    page.locator("#preprocess-dst textarea").fill(str(dst))
    _set_number(page, "preprocess-width", 64)
    _set_number(page, "preprocess-height", 64)
    page.locator("#preprocess-flip input[type=checkbox]").check()
    page.locator("#preprocess-run").click()
    page.wait_for_function("() => document.querySelector('#preprocess-result').innerText.includes('pictures written')",
                           timeout=60_000)
    text = page.locator("#preprocess-result").inner_text()
    assert "4 pictures written" in text and "broken.png" in text and "0 bytes" in text
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dataset-preprocess.png"), full_page=True)

    assert sorted(p.name for p in dst.iterdir()) == ["a-flipped.png", "a-flipped.txt", "a.png", "a.txt",
                                                    "b-flipped.png", "b.png"]
    with Image.open(dst / "b.png") as im:
        assert im.size == (64, 64)
    assert (dst / "a.txt").read_text(encoding="utf-8") == "sls, 1girl"
    assert sorted((p.name, p.read_bytes()) for p in src.iterdir()) == before
    page.close()


def test_preprocess_labels_in_chinese(server, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    page.goto(server + "/", wait_until="load")
    page.wait_for_selector("#txt2img-generate")
    assert page.locator("#tab-extras-button").inner_text().strip() == "附加功能"
    page.locator("#tab-dataset-button").click()
    assert page.locator("#tab-dataset-preprocess-button").inner_text().strip() == "图像预处理"
    page.locator("#tab-dataset-preprocess-button").click()
    page.wait_for_selector("#preprocess-run")
    body = page.locator("#tab-dataset-preprocess").inner_text()
    for words in ("源目录", "目标目录", "创建水平翻转副本", "自动焦点裁切"):
        assert words in body, words
    page.close()


def test_extras_single_image_upscale(server, browser, tmp_path):  # noqa: F811
    picture = tmp_path / "small.png"
    Image.new("RGB", (32, 24), (30, 160, 60)).save(picture)
    page = _open_txt2img(server, browser)
    _open_tab(page, "tab-extras", "Extras")
    page.wait_for_selector("#extras-generate")
    page.locator("#extras-image input[type=file]").set_input_files(str(picture))
    page.wait_for_selector("#extras-image img")
    page.locator("#extras-generate").click()
    page.wait_for_function("() => document.querySelector('#extras-info').innerText.includes('Postprocess upscale by: 2')",
                           timeout=60_000)
    image = page.locator("#extras-result img").first
    image.wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('#extras-result img')?.naturalWidth === 64")
    page.screenshot(path=str(ARTIFACTS / "extras-single.png"), full_page=True)
    page.close()
