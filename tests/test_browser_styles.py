"""Prompt styles in headless Chromium: pick a style, 📋 writes it into the prompt, the 🖌️ editor
saves a new one into styles.csv, a job applies it, and the Chinese page shows the WebUI's terms."""

from __future__ import annotations

import pytest

from tests.test_browser import ARTIFACTS, _set_number, browser, serving  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

STYLES_CSV = "name,prompt,negative_prompt\nFrame,\"photo of {prompt}, film grain\",lowres\n"


@pytest.fixture(scope="module")
def styles_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("browser_styles")
    (data / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    with serving(data) as url:
        yield url, data


def _pick(page, dropdown_id: str, name: str) -> None:
    page.locator(f"#{dropdown_id} input").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.keyboard.press("Escape")


def test_styles_row_apply_edit_and_generate(styles_server, browser):  # noqa: F811
    url, data = styles_server
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="en-US")
    page.set_default_timeout(30_000)
    page.goto(url + "/", wait_until="load")
    page.wait_for_selector("#txt2img-styles")

    page.locator("#txt2img-prompt textarea").fill("a cat")
    page.locator("#txt2img-negative-prompt textarea").fill("ugly")
    _pick(page, "txt2img-styles", "Frame")
    page.locator("#txt2img-styles-apply").click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img-prompt textarea').value === 'photo of a cat, film grain'")
    assert page.locator("#txt2img-negative-prompt textarea").input_value() == "ugly, lowres"

    # 🖌️: a new style from the editor lands in styles.csv (the old file kept as styles.csv.bak).
    page.locator("#txt2img-styles-edit").click()
    page.wait_for_selector("#txt2img-styles-editor", state="visible")
    name = page.locator("#txt2img-style-name input")
    name.fill("Neon")
    name.press("Enter")
    page.locator("#txt2img-style-prompt textarea").fill("{prompt}, neon lights")
    page.locator("#txt2img-style-save").click()
    page.wait_for_function("() => document.querySelector('#txt2img-style-status').innerText.includes('Neon')")
    assert "Neon,\"{prompt}, neon lights\"," in (data / "styles.csv").read_text(encoding="utf-8-sig")
    assert (data / "styles.csv.bak").is_file()
    page.screenshot(path=str(ARTIFACTS / "txt2img-styles-editor.png"), full_page=True)

    # The new style is in the list (it refreshes on focus) and a job adds it to the prompt.
    page.locator("#txt2img-prompt textarea").fill("a dog")
    page.locator("#txt2img-negative-prompt textarea").fill("")
    _pick(page, "txt2img-styles", "Neon")
    for elem_id, value in (("txt2img-steps", 2), ("txt2img-width", 64), ("txt2img-height", 64)):
        _set_number(page, elem_id, value)
    page.locator("#txt2img-generate").click()
    page.wait_for_function("() => document.querySelector('#txt2img-infotext').innerText.includes('Steps:')",
                           timeout=120_000)
    assert page.locator("#txt2img-infotext").inner_text().startswith("a dog, neon lights")
    assert "Neon" in page.locator("#txt2img-styles").inner_text()  # the choice stays for the next job
    # img2img has the same row; its list includes the style saved from txt2img when it opens.
    page.locator("#tab-img2img-button").click()
    _pick(page, "img2img-styles", "Neon")
    assert page.locator("#img2img-styles-apply").is_visible() and page.locator("#img2img-styles-edit").is_visible()
    page.close()

    chinese = browser.new_page(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    chinese.goto(url + "/?__lang=zh-CN", wait_until="load")
    chinese.get_by_role("button", name="生成").wait_for()
    assert "预设样式" in chinese.locator("#txt2img-styles").inner_text()
    assert "将所选样式应用到当前提示词" in chinese.locator("#txt2img-styles-apply").inner_text()
    chinese.locator("#txt2img-styles-edit").click()
    chinese.wait_for_selector("#txt2img-styles-editor", state="visible")
    assert "编辑样式" in chinese.locator("#txt2img-styles-edit").inner_text()
    chinese.screenshot(path=str(ARTIFACTS / "txt2img-styles-zh-CN.png"), full_page=False)
    chinese.get_by_role("tab", name="设置").click()
    chinese.locator("#settings-saving").click()
    chinese.wait_for_selector("#settings-samples-format", state="visible")
    assert "图像文件格式" in chinese.locator("#settings-samples-format").inner_text()
    chinese.screenshot(path=str(ARTIFACTS / "settings-saving-zh-CN.png"), full_page=True)
    chinese.close()
