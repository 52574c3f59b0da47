"""Dataset › Tag in headless Chromium: one picture's tags with scores, then a folder tagged as a job."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.test_browser import ARTIFACTS, browser, serving  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def tag_server(tmp_path_factory):
    from core.dataset.taggers.fixtures import write_tiny_wd14

    data = tmp_path_factory.mktemp("tag_browser")
    write_tiny_wd14(data / "models" / "tagger" / "wd-tiny")
    with serving(data) as url:
        yield url


def test_tag_one_picture_then_a_folder(tag_server, browser, tmp_path):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    picture = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(picture)
    folder = tmp_path / "train"
    folder.mkdir()
    for colour in ("red", "white", "blue"):
        Image.new("RGB", (48, 48), colour).save(folder / f"{colour}.png")

    page = browser.new_page(viewport={"width": 1400, "height": 1300}, locale="en-US")
    page.set_default_timeout(30_000)
    page.goto(tag_server + "/", wait_until="load")
    page.get_by_role("tab", name="Dataset", exact=True).click()
    page.locator("#dataset-tabs").get_by_role("tab", name="Tag", exact=True).click()
    assert "wd-tiny" in page.locator("#dataset-tag-model input").input_value()

    page.locator("#dataset-tag-additional textarea").fill("shengcai")
    page.locator("#dataset-tag-image input[type=file]").set_input_files(str(picture))
    page.locator("#dataset-tag-image img").first.wait_for(state="visible")
    page.locator("#dataset-tag-interrogate").click()
    page.wait_for_function("() => document.querySelector('#dataset-tag-caption textarea')?.value"
                           ".startsWith('shengcai, red theme')", timeout=60_000)
    labels = page.locator("#dataset-tag-tags").inner_text()
    assert "red theme" in labels and "%" in labels  # tags with their scores
    assert "general" in page.locator("#dataset-tag-ratings").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dataset-tag-single.png"), full_page=True)

    page.get_by_role("tab", name="Batch folder", exact=True).click()
    page.locator("#dataset-tag-folder textarea, #dataset-tag-folder input").first.fill(str(folder))
    page.locator("#dataset-tag-start").click()
    page.wait_for_function("() => document.querySelector('#dataset-tag-log textarea')?.value"
                           ".includes('3 of 3 captions written')", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "dataset-tag-batch.png"), full_page=True)
    assert (folder / "red.txt").read_text(encoding="utf-8").startswith("shengcai, red theme")
    assert (folder / "white.txt").read_text(encoding="utf-8").startswith("shengcai, white background")

    zh = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    zh.goto(tag_server + "/", wait_until="load")
    zh.get_by_role("tab", name="数据集", exact=True).click()
    zh.locator("#dataset-tabs").get_by_role("tab", name="打标", exact=True).click()
    zh.locator("#dataset-tag-interrogate").wait_for(state="visible")
    assert "反推" in zh.locator("#dataset-tag-interrogate").inner_text()
    zh.screenshot(path=str(ARTIFACTS / "dataset-tag-zh.png"), full_page=True)
