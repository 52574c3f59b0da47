"""The Train tab's WebUI sub-tabs in headless Chromium: create an embedding, train it a few steps
with a preview, the file reloads with its steps; the same tabs in Chinese."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from tests.test_browser import ARTIFACTS, _open_tab, _open_txt2img, browser, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def _fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def _choose(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=value, exact=True).click()


def test_create_and_train_an_embedding_from_the_train_tab(server, browser, tmp_path):  # noqa: F811
    data = tmp_path / "pictures"
    data.mkdir()
    for k in range(2):
        im = Image.new("RGB", (64, 64), (30, 60, 200))
        ImageDraw.Draw(im).ellipse([10 + k * 4, 12, 50, 52], fill=(240, 200, 0))
        im.save(data / f"{k}.png")
        (data / f"{k}.txt").write_text("circle, blue background", encoding="utf-8")
    page = _open_txt2img(server, browser)
    _open_tab(page, "tab-train", "Train")
    _open_tab(page, "train-tab-create-embedding", "Create embedding")
    _fill(page, "ti-name", "kxyellow")
    _fill(page, "ti-init-text", "yellow")
    page.locator("#ti-create").click()
    page.wait_for_function("() => document.querySelector('#ti-create-message').innerText.includes('kxyellow.pt')")
    page.locator("#ti-create").click()  # a second time: the overwrite guard answers
    page.wait_for_function("() => document.querySelector('#ti-create-message').innerText.includes('already exists')")
    _open_tab(page, "train-tab-ti", "Train")  # the new embedding is listed without a refresh
    _choose(page, "ti-train-embedding", "kxyellow")
    _fill(page, "ti-data-root", data)
    _fill(page, "ti-log-directory", tmp_path / "log")
    _choose(page, "ti-template", "subject_filewords.txt")
    _fill(page, "ti-width", 64)
    _fill(page, "ti-height", 64)
    _fill(page, "ti-steps", 4)
    _fill(page, "ti-image-every", 2)
    _fill(page, "ti-save-every", 2)
    _fill(page, "ti-embedding-lr", "0.01")
    page.locator("#ti-train-embedding-button").click()
    page.wait_for_function("() => { const t = document.querySelector('#ti-message').innerText; return t.includes('Training finished') || t.includes('Error') || t.includes('rror'); }",
                           timeout=240_000)
    assert "step 4" in page.locator("#ti-message").inner_text(), page.locator("#ti-message").inner_text()
    page.wait_for_selector("#ti-preview img")
    path = page.locator("#ti-message").inner_text().split(": ", 1)[1].strip()
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 4 and saved["string_to_param"]["*"].shape[0] == 1
    assert sorted(p.name for p in (tmp_path / "log").glob("*/kxyellow/embeddings/*.pt")) == \
        ["kxyellow-2.pt", "kxyellow-4.pt"]
    assert len(list((tmp_path / "log").glob("*/kxyellow/images/*.png"))) == 2
    assert len(list((tmp_path / "log").glob("*/kxyellow/image_embeddings/*.png"))) == 2
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "train-ti-tab.png"), full_page=True)

    # A hypernetwork with the WebUI's default modules: made at once, and refused by this 64-wide model
    # with a message that says what to do.
    _open_tab(page, "train-tab-create-hypernetwork", "Create hypernetwork")
    _fill(page, "hn-name", "hxui")
    page.locator("#hn-create").click()
    page.wait_for_function("() => document.querySelector('#hn-create-message').innerText.includes('hxui.pt')")
    _open_tab(page, "train-tab-ti", "Train")
    _choose(page, "ti-train-hypernetwork", "hxui")
    _choose(page, "ti-template", "hypernetwork.txt")
    page.locator("#ti-train-hypernetwork-button").click()
    page.wait_for_function("() => document.querySelector('#ti-message').innerText.includes('module size')",
                           timeout=120_000)
    page.close()

    zh = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    zh.goto(server + "/?__lang=zh-CN", wait_until="load")
    zh.wait_for_selector("#txt2img-generate")
    zh.locator("#tab-train-button").click()
    zh.locator("#train-tab-create-hypernetwork-button").click()
    zh.wait_for_selector("#hn-create")
    assert zh.locator("#train-tab-create-embedding-button").inner_text().strip() == "创建嵌入式模型"
    assert zh.locator("#hn-create").inner_text().strip() == "创建超网络模型"
    zh.screenshot(path=str(ARTIFACTS / "train-ti-create-hypernetwork-zh.png"), full_page=True)
    zh.locator("#train-tab-ti-button").click()
    zh.wait_for_selector("#ti-train-embedding-button")
    assert zh.locator("#ti-interrupt").inner_text().strip() == "中止"
    zh.screenshot(path=str(ARTIFACTS / "train-ti-zh.png"), full_page=True)
    zh.close()
