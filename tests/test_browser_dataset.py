"""The Dataset tab in headless Chromium: seed 000's tag-editor path and the folder checks."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from tests.test_browser import ARTIFACTS, _open_tab, _open_txt2img, browser, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def _dataset(folder, captions: dict[str, str]):
    folder.mkdir(parents=True)
    for n, (stem, caption) in enumerate(captions.items()):
        im = Image.new("RGB", (64, 64), (255, 255, 255))
        ImageDraw.Draw(im).ellipse([n * 5, n * 3, 40 + n * 5, 40 + n * 3], fill=(200, 30 * n, 40))
        im.save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(caption, encoding="utf-8")
    return folder


def _table_cells(page, elem_id: str, first: str | None = None) -> list[str]:
    if first is not None:  # the table renders after the status line: wait for its first cell
        page.wait_for_function(
            f"() => document.querySelector('#{elem_id} [role=gridcell]')?.innerText.trim() === {first!r}")
    return [c.strip() for c in page.locator(f"#{elem_id} [role=gridcell]").all_inner_texts()]


def test_tag_editor_removes_the_rarest_tag_and_saves_with_a_backup(server, browser, tmp_path):  # noqa: F811
    folder = _dataset(tmp_path / "set", {
        "a": "shengcai, 1girl, solo, short hair",
        "b": "shengcai, 1girl, solo, brown hair",
        "c": "shengcai, 1girl, lips",
        "d": "shengcai, 1girl, solo, rare freckles",
    })
    page = _open_txt2img(server, browser)
    _open_tab(page, "tab-dataset", "Dataset")
    _open_tab(page, "tab-dataset-tag_editor", "Tag editor")
    page.locator("#tag-editor-folder textarea, #tag-editor-folder input").first.fill(str(folder))
    page.locator("#tag-editor-load").click()
    page.wait_for_function("() => document.querySelector('#tag-editor-status').innerText.includes('Loaded 4 images')")
    cells = _table_cells(page, "tag-editor-table", first="1girl")
    assert cells[:4] == ["1girl", "4", "shengcai", "4"]  # seed 000: "1girl 100" = in 100 files
    page.locator("#tag-editor-sort label", has_text="Rarest first").click()
    rarest = _table_cells(page, "tag-editor-table", first="brown hair")[0]
    assert rarest == "brown hair"

    tags = page.locator("#tag-editor-tags input")
    tags.click()
    tags.fill(rarest)
    page.locator("ul[role=listbox] li", has_text=f"{rarest} (1)").first.click()
    page.locator("#tag-editor-remove").click()
    page.wait_for_function("() => document.querySelector('#tag-editor-status').innerText.includes('1 captions changed')")
    assert (folder / "b.txt").read_text(encoding="utf-8") == "shengcai, 1girl, solo, brown hair"  # not saved yet
    page.screenshot(path=str(ARTIFACTS / "dataset-tag-editor.png"), full_page=True)
    page.locator("#tag-editor-save").click()
    page.wait_for_function("() => document.querySelector('#tag-editor-status').innerText.includes('Saved 1 captions')")
    assert (folder / "b.txt").read_text(encoding="utf-8") == "shengcai, 1girl, solo"
    assert (folder / "a.txt").read_text(encoding="utf-8") == "shengcai, 1girl, solo, short hair"
    # A picture's caption and what three epochs would feed the text encoder (keep tokens 1, shuffled).
    page.locator("#tag-editor-gallery .thumbnail-item").nth(1).click()
    page.wait_for_function("() => document.querySelector('#tag-editor-caption textarea').value === "
                           "'shengcai, 1girl, solo'")
    page.wait_for_function("() => document.querySelector('#tag-editor-preview').innerText.includes('Epoch 3')")
    assert "Always kept first: shengcai" in page.locator("#tag-editor-preview").inner_text()
    backups = list((folder / ".kiln-caption-backups").iterdir())
    assert len(backups) == 1
    assert (backups[0] / "b.txt").read_text(encoding="utf-8") == "shengcai, 1girl, solo, brown hair"
    assert sorted(p.name for p in backups[0].iterdir()) == ["b.txt"]
    page.close()


def test_folders_tab_shows_the_step_arithmetic_and_the_problems(server, browser, tmp_path):  # noqa: F811
    concept = _dataset(tmp_path / "train" / "10_sls 1girl", {"a": "sls, 1girl", "b": "sls, 1girl, smile"})
    (concept / "b.txt").unlink()
    page = _open_txt2img(server, browser)
    page.set_extra_http_headers({"Accept-Language": "zh-CN,zh;q=0.9"})
    _open_tab(page, "tab-dataset", "Dataset")
    _open_tab(page, "tab-dataset-folders", "Folders & checks")
    page.locator("#folders-train textarea, #folders-train input").first.fill(str(tmp_path / "train"))
    page.locator("#folders-resolution textarea, #folders-resolution input").first.fill("64")
    page.locator("#folders-check").click()
    page.wait_for_function("() => document.querySelector('#folders-plan').innerText.includes('= 20 steps')")
    assert "2 images × 10 repeats ÷ batch 1 × 1 epoch = 20 steps" in page.locator("#folders-plan").inner_text()
    page.wait_for_function("() => document.querySelector('#folders-summary').innerText.includes('警告')")
    problems = " ".join(_table_cells(page, "folders-problems"))
    assert "b.png" in problems and "no .txt caption" in problems
    page.screenshot(path=str(ARTIFACTS / "dataset-folders.png"), full_page=True)
    page.close()


def test_make_demo_dataset_button_writes_the_pictures_and_fills_the_source(server, browser, tmp_path):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    page.set_default_timeout(30_000)
    page.set_extra_http_headers({"Accept-Language": "zh-CN,zh;q=0.9"})
    page.goto(server + "/?__lang=zh-CN", wait_until="load")
    page.wait_for_selector("#txt2img-generate")
    page.locator("#tab-dataset-button").click()
    page.locator("#tab-dataset-folders-button").click()
    assert page.locator("#folders-demo").inner_text().strip() == "生成示例数据集"
    page.locator("#folders-demo-folder textarea, #folders-demo-folder input").first.fill(str(tmp_path / "demo"))
    page.locator("#folders-demo").click()
    page.wait_for_function("() => document.querySelector('#folders-demo-result').innerText.includes('未打标')")
    assert (tmp_path / "demo" / "a.jpg").is_file() and (tmp_path / "demo" / "orange_03 copy.png").is_file()
    source = page.locator("#folders-source textarea, #folders-source input").first
    assert source.input_value() == str(tmp_path / "demo")
    page.screenshot(path=str(ARTIFACTS / "dataset-demo.png"), full_page=True)
    page.locator("#folders-demo").click()  # a second time: refused, nothing replaced
    page.wait_for_function("() => document.querySelector('#folders-demo-result').innerText.includes('❌')")
    page.close()
