"""The Train tab in headless Chromium: a LoRA trained on the built-in model, its loss plotted,
its file written with kohya's metadata; a bad learning rate named before anything runs."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw
from safetensors import safe_open

from tests.test_browser import ARTIFACTS, _open_tab, _open_txt2img, browser, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def _fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def test_train_a_lora_from_the_train_tab(server, browser, tmp_path):  # noqa: F811
    concept = tmp_path / "train" / "1_teal circle"
    concept.mkdir(parents=True)
    for k in range(2):
        im = Image.new("RGB", (64, 64), (245, 245, 245))
        ImageDraw.Draw(im).ellipse([10 + k * 4, 12, 50, 52], fill=(0, 150, 150))
        im.save(concept / f"{k}.png")
        (concept / f"{k}.txt").write_text("a teal circle on a white background", encoding="utf-8")
    page = _open_txt2img(server, browser)
    _open_tab(page, "tab-train", "Train")
    _fill(page, "train-data-dir", tmp_path / "train")
    _fill(page, "train-output-dir", tmp_path / "out")
    _fill(page, "train-output-name", "teal-ui")
    _fill(page, "train-resolution", "64,64")
    _fill(page, "train-network-dim", 4)
    _fill(page, "train-epochs", 2)
    _fill(page, "train-batch", 2)
    (tmp_path / "prompts.txt").write_text("a teal circle on a white background --d 3 --s 6\n", encoding="utf-8")
    _fill(page, "train-sample-prompts", tmp_path / "prompts.txt")
    _fill(page, "train-learning-rate", "abc")
    page.locator("#train-start").click()
    page.wait_for_function("() => document.querySelector('#train-message').innerText.includes('learning_rate')")
    assert "not a number" in page.locator("#train-message").inner_text()
    _fill(page, "train-learning-rate", "1e-3")
    page.locator("#train-start").click()
    page.wait_for_function("() => document.querySelector('#train-message').innerText.includes('Training finished')",
                           timeout=240_000)
    assert (tmp_path / "out" / "teal-ui.safetensors").is_file()
    assert (tmp_path / "out" / "teal-ui-000001.safetensors").is_file()
    with safe_open(tmp_path / "out" / "teal-ui.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_output_name"] == "teal-ui" and meta["ss_num_train_images"] == "2"
    assert "teal-ui.safetensors" in page.locator("#train-files").inner_text()
    page.wait_for_selector("#train-loss-plot canvas, #train-loss-plot svg")
    assert len(list((tmp_path / "out" / "sample").glob("teal-ui_e00000*.png"))) == 2
    page.wait_for_selector("#train-samples img")
    page.wait_for_timeout(1500)  # the chart draws its lines after its axes
    page.screenshot(path=str(ARTIFACTS / "train-tab.png"), full_page=True)

    # The evaluation sheet of the run: its 2 epoch files × 2 weights × 1 prompt, the checker's
    # score under each cell (the built-in Shapes model), then "Keep this one".
    page.locator("#train-sheet").click()
    _fill(page, "train-sheet-weights", "0, 1")
    _fill(page, "train-sheet-steps", 4)
    page.locator("#train-sheet-make").click()
    page.wait_for_function("() => document.querySelector('#train-sheet-message').innerText.includes('Sheet saved')",
                           timeout=240_000)
    assert (tmp_path / "out" / "teal-ui-sheet.png").is_file() and (tmp_path / "out" / "teal-ui-sheet.html").is_file()
    page.wait_for_selector("#train-sheet-image img")
    cells = page.locator("#train-sheet-cells .thumbnail-item")
    assert cells.count() == 4
    cells.first.click()
    page.wait_for_function("() => document.querySelector('#train-sheet-cell-info').innerText.includes('<lora:teal-ui')")
    _fill(page, "train-sheet-keep-name", "teal-ui-kept")
    page.locator("#train-sheet-keep").click()
    page.wait_for_function("() => document.querySelector('#train-sheet-message').innerText.includes('teal-ui-kept')")
    assert (tmp_path / "out" / "teal-ui.safetensors").is_file()  # the original stays
    page.screenshot(path=str(ARTIFACTS / "train-sheet.png"), full_page=True)
    page.close()
