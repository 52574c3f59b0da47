"""Every tab in 简体中文 in headless Chromium: the WebUI's Chinese terms where it has them, no
English label left, a full-page screenshot of each (test-artifacts/zh/) for a human to look at;
and Settings' "Language of the page" that sticks across a reload whatever the browser's language.

One server for the whole module (about a minute on two cores).
"""

from __future__ import annotations

import re

import pytest

from tests.test_browser import ARTIFACTS, browser, serving  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

SHOTS = ARTIFACTS / "zh"

# English labels that must not show in the Chinese page (each is translated in the tables).
ENGLISH_LABELS = {
    "Prompt", "Negative prompt", "Generate", "Interrupt", "Skip", "Sampling method", "Sampling steps",
    "Schedule type", "Width", "Height", "Batch count", "Batch size", "CFG Scale", "Seed", "Extra", "Hires. fix",
    "Upscaler", "Denoising strength", "Upscale by", "Script", "Output", "Live preview", "Styles", "Refresh",
    "Extra networks", "Additional Networks", "LoRA metadata", "Textual Inversion", "Hypernetworks",
    "Checkpoints", "Enable", "Model", "Weight", "Search", "Sort by", "Field", "Value", "Folder", "Tag", "Count",
    "Repeats", "Images", "Kind", "Severity", "Problem", "File", "Files", "Job", "Owner", "What", "State",
    "Progress", "Position", "Submitted", "Inpaint", "Inpaint upload", "Batch", "Resize mode", "Mask blur",
    "Mask mode", "Masked content", "Inpaint area", "Just resize", "Crop and resize", "Resize and fill",
    "Single Image", "Batch from Directory", "Preprocess", "Tagging", "Tag editor", "Folders & checks",
    "Train", "Create embedding", "Create hypernetwork", "Checkpoint Merger", "Merge", "Source", "Parameters",
    "Send to txt2img", "Send to img2img", "Send to inpaint", "Apply settings", "Settings", "Extensions", "Queue",
    "Textbox", "once", "deterministic", "random", "disabled", "Automatic", "No tagger installed.",
    "X/Y/Z plot", "X type", "X values", "Language of the page", "Follow the browser",
}
# Per top tab: its button's Chinese title, the sub-tabs to visit (button text), and Chinese labels it shows.
TABS = {
    "txt2img": ("文生图", [], ["提示词", "反向提示词", "生成", "中止", "采样方法 (Sampler)", "迭代步数 (Steps)",
                            "提示词相关性 (CFG Scale)", "随机种子 (Seed)", "高分辨率修复 (Hires. fix)", "重绘幅度",
                            "额外网络", "附加网络 (Additional Networks)", "嵌入式 (T.I. Embedding)",
                            "X轴类型", "X轴值", "显示图例"]),
    "img2img": ("图生图", ["图生图", "局部重绘", "上传重绘蒙版", "批量处理"],
                ["提示词", "反向提示词", "重绘幅度", "缩放模式", "蒙版边缘模糊度", "重绘区域", "输入目录"]),
    "extras": ("附加功能", ["单张图片", "从目录进行批量处理"], ["放大算法"]),
    "dataset": ("数据集", ["图像预处理", "打标", "标签编辑器", "文件夹与检查"], ["图像预处理"]),
    "train": ("训练", ["LoRA (kohya)", "DreamBooth / 微调", "创建嵌入式模型", "创建超网络模型", "训练"],
              ["学习率 (learning_rate)", "正则化图像目录 (reg_data_dir)", "先验损失权重 (prior_loss_weight)",
               "创建嵌入式模型", "训练嵌入式模型", "训练超网络模型", "中止"]),
    "merger": ("模型融合", [], ["主要模型 (A)", "第二模型 (B)", "融合算法"]),
    "pnginfo": ("PNG 图片信息", [], ["来源", "参数"]),
    "settings": ("设置", [], ["保存设置", "界面语言", "跟随浏览器", "外挂 VAE 模型", "CLIP 终止层数 (Clip skip)"]),
    "extensions": ("扩展", [], []),
    "queue": ("队列", [], ["任务", "所有者", "状态"]),
}

# Visible text of an element (text nodes and placeholders), each piece trimmed.
VISIBLE_TEXTS = r"""(root) => {
  const out = [];
  const walk = (n) => {
    for (const c of n.childNodes) {
      if (c.nodeType === 3) {
        const t = c.textContent.trim(), el = c.parentElement, r = el.getBoundingClientRect();
        if (t && r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden') out.push(t);
      } else if (c.nodeType === 1) walk(c);
    }
  };
  walk(root);
  for (const e of root.querySelectorAll('input[placeholder], textarea[placeholder]'))
    if (e.offsetParent && e.placeholder) out.push(e.placeholder);
  for (const e of root.querySelectorAll('.wrap input:not([type=radio]):not([type=checkbox]):not([type=number])'))
    if (e.offsetParent && e.value) out.push(e.value);
  return out;
}"""
# Labels whose text is cut off: a label or a tab button narrower than its text, or wider than its box.
CLIPPED = r"""(root) => [...root.querySelectorAll('label span, span[data-testid=block-info], button[role=tab]')]
  .filter(e => e.offsetParent && e.clientWidth > 1)  // not screen-reader-only
  .filter(e => e.scrollWidth > e.clientWidth + 1
               || e.getBoundingClientRect().right > e.parentElement.getBoundingClientRect().right + 1)
  .map(e => e.innerText.trim()).filter(t => t)"""


@pytest.fixture(scope="module")
def zh_server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("zh_data")) as url:
        yield url


def _open(server: str, chromium, locale: str):
    page = chromium.new_page(viewport={"width": 1400, "height": 1000}, locale=locale)
    page.set_default_timeout(30_000)
    page.goto(server + "/", wait_until="load")
    page.wait_for_selector("#txt2img-generate")
    page.wait_for_function("() => document.querySelector('#kiln-checkpoint input').value !== ''")
    return page


def _open_accordions(page, scope: str) -> None:
    for _ in range(20):
        closed = page.locator(f"{scope} button.label-wrap:not(.open)").filter(visible=True)
        if closed.count() == 0:
            return
        closed.first.click()
        page.wait_for_timeout(100)


def _english_left(page, scope: str) -> list[str]:
    texts = page.evaluate(VISIBLE_TEXTS, page.locator(scope).element_handle())
    return sorted({t for t in texts if t in ENGLISH_LABELS})


def _pick_xyz(page) -> None:
    page.locator("#txt2img-script input").click()
    page.locator("ul[role=listbox] li[role=option]", has_text="X/Y/Z 图表").first.click()
    page.locator("#txt2img-xyz").wait_for(state="visible")


@pytest.mark.parametrize("tab", list(TABS))
def test_tab_in_chinese(zh_server, browser, tab):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    title, subtabs, labels = TABS[tab]
    page = _open(zh_server, browser, "zh-CN")
    try:
        button = page.locator(f"#tab-{tab}-button")
        assert button.inner_text().strip() == title
        button.click()
        scope = f"#tab-{tab}"
        page.locator(scope).wait_for(state="visible")
        if tab == "txt2img":
            _pick_xyz(page)
        if tab == "queue":  # its column titles come with the page-load event (Gradio translates no headers)
            page.wait_for_function("() => document.querySelector('#queue-table').textContent.includes('所有者')")
        _open_accordions(page, scope)
        page.wait_for_timeout(300)
        shown = page.locator(scope).inner_text()
        assert _english_left(page, scope) == []
        assert page.evaluate(CLIPPED, page.locator(scope).element_handle()) == []
        page.screenshot(path=str(SHOTS / f"tab-{tab}.png"), full_page=True)
        for k, name in enumerate(subtabs):
            page.locator(f"{scope} button[role=tab]", has_text=re.compile(f"^{re.escape(name)}$")).first.click()
            page.wait_for_timeout(300)
            _open_accordions(page, scope)
            assert _english_left(page, scope) == [], name
            assert page.evaluate(CLIPPED, page.locator(scope).element_handle()) == [], name
            page.screenshot(path=str(SHOTS / f"tab-{tab}-{k + 1}.png"), full_page=True)
            shown += page.locator(scope).inner_text()
        assert [label for label in labels if label not in shown] == []  # the WebUI's terms, on the tab or its sub-tabs
        assert page.locator(".toast-body").all_inner_texts() == []  # no error on the way
    finally:
        page.close()


def test_language_choice_sticks_across_reloads(zh_server, browser):  # noqa: F811
    """An English browser picks 简体中文 in Settings: the page is Chinese from the next load on (and
    run-time text too); "Follow the browser" gives it back its own language."""
    page = _open(zh_server, browser, "en-US")
    try:
        assert page.locator("#txt2img-generate").inner_text().strip() == "Generate"
        page.locator("#tab-settings-button").click()
        page.locator("#settings-ui-language label", has_text="简体中文").click()
        page.locator("#settings-apply").click()
        # the message already in the chosen language (run-time text follows the choice)
        page.wait_for_function("() => document.querySelector('#settings-result').innerText.includes('项设置已更改')")
        page.reload(wait_until="load")
        page.wait_for_selector("#txt2img-generate")
        page.wait_for_function("() => document.querySelector('#txt2img-generate').innerText.trim() === '生成'")
        assert page.locator("#tab-settings-button").inner_text().strip() == "设置"
        page.screenshot(path=str(SHOTS / "chosen-zh-in-an-english-browser.png"), full_page=True)
        page.locator("#tab-settings-button").click()
        assert page.locator("#settings-ui-language label.selected").inner_text().strip() == "简体中文"
        page.locator("#settings-ui-language label", has_text="跟随浏览器").click()
        page.locator("#settings-apply").click()
        # the message in the page's language from now on: the browser's again
        page.wait_for_function("() => document.querySelector('#settings-result').innerText.includes('settings changed')")
        page.reload(wait_until="load")
        page.wait_for_function("() => document.querySelector('#txt2img-generate')?.innerText.trim() === 'Generate'")
    finally:
        page.close()
