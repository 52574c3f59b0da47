"""The Checkpoint Merger tab in headless Chromium: two tiny checkpoints merged from the tab, the
result line shown, the new file in every checkpoint list; the Chinese page screenshotted."""

from __future__ import annotations

import pytest

from core.models.checkpoint import load_checkpoint, save_checkpoint
from core.models.fixtures import tiny_model
from tests.test_browser import ARTIFACTS, _open_tab, browser, serving  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def merger_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("merger_data")
    folder = data / "models" / "Stable-diffusion"
    for name, seed in (("tiny-a", 5), ("tiny-b", 6)):
        save_checkpoint(tiny_model("sd1", seed), folder / f"{name}.safetensors")
    with serving(data) as url:
        yield url, folder


def _pick(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li", has_text=text).first.click()


def _open_merger(url: str, browser, locale: str, query: str = ""):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale=locale)
    page.set_default_timeout(30_000)
    page.goto(url + "/" + query, wait_until="load")
    page.wait_for_selector("#tab-merger-button")
    return page


def test_merge_two_models_from_the_tab(merger_server, browser):  # noqa: F811
    url, folder = merger_server
    page = _open_merger(url, browser, "en-US")
    _open_tab(page, "tab-merger", "Checkpoint Merger")
    page.wait_for_selector("#merger-merge")
    page.locator("#merger-merge").click()  # no A yet: the WebUI's message
    page.wait_for_function("() => document.querySelector('#merger-result').innerText.includes('primary model')")
    _pick(page, "merger-primary", "tiny-a.safetensors")
    _pick(page, "merger-secondary", "tiny-b.safetensors")
    page.locator("#merger-merge").click()
    page.wait_for_function("() => document.querySelector('#merger-result').innerText.includes('Checkpoint saved to')",
                           timeout=120_000)
    expected = folder / "0.7(tiny-a) + 0.3(tiny-b).safetensors"
    assert str(expected) in page.locator("#merger-result").inner_text()
    assert load_checkpoint(expected).spec.family == "sd1"
    # the new file is in the page's checkpoint list at once
    page.locator("#kiln-checkpoint input").click()
    page.wait_for_selector("ul[role=listbox] li:has-text('0.7(tiny-a) + 0.3(tiny-b)')")
    page.keyboard.press("Escape")
    # the same merge again: the file exists, so it is refused and named
    page.locator("#merger-merge").click()
    page.wait_for_function("() => document.querySelector('#merger-result').innerText.includes('already exists')")
    # Read metadata from selected checkpoints: A's and B's metadata as JSON, for editing
    page.locator("#merger-metadata").get_by_text("Metadata").first.click()
    page.locator("#merger-read-metadata").click()
    page.wait_for_function("() => document.querySelector('#merger-metadata-json textarea').value.includes('format')")
    page.close()


def test_the_merger_tab_in_chinese(merger_server, browser):  # noqa: F811
    url, folder = merger_server
    page = _open_merger(url, browser, "zh-CN", "?__lang=zh-CN")
    _open_tab(page, "tab-merger", "模型融合")
    page.wait_for_selector("#merger-merge")
    text = page.locator("#tab-merger").inner_text()
    for label in ("主要模型 (A)", "第二模型 (B)", "第三模型 (C)", "自定义名称 (可选)", "融合比例 (M)", "融合算法",
                  "无插值", "加权和", "差额叠加", "模型格式", "储存半精度 (float16) 模型", "复制配置文件",
                  "嵌入 VAE 模型", "移除匹配名称的权重", "用 B 的文本编码器替换 A 的"):
        assert label in text, label
    assert page.locator("#merger-merge").inner_text().strip() == "融合"
    _pick(page, "merger-primary", "tiny-a.safetensors")
    _pick(page, "merger-secondary", "tiny-b.safetensors")
    page.locator("#merger-custom-name input, #merger-custom-name textarea").first.fill("zh-merge")
    page.locator("#merger-replace-te input").check()
    page.locator("#merger-merge").click()
    page.wait_for_function("() => document.querySelector('#merger-result').innerText.includes('模型已保存到')",
                           timeout=120_000)
    assert (folder / "zh-merge.safetensors").is_file()
    page.screenshot(path=str(ARTIFACTS / "merger-tab-zh.png"), full_page=True)
    page.close()
