"""End to end in headless Chromium: start app.py, type a prompt, Generate, read the PNG it serves.

Screenshots of every tab go to test-artifacts/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
SHAPES_MODEL = REPO / "models" / "Stable-diffusion" / "kiln-shapes-v1.safetensors"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PROMPT = "a red circle on a blue background"
NO_PREVIEW_LORA = "kiln_no_preview"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _write_lora_without_preview(path: Path) -> None:
    """A small kohya LoRA file (one down/up pair, kohya's metadata) with no picture beside it."""
    import torch

    from core.networks.fixtures import kohya_metadata, save_safetensors

    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_safetensors(path, {f"{key}.lora_down.weight": torch.zeros(4, 32), f"{key}.lora_up.weight": torch.zeros(32, 4),
                            f"{key}.alpha": torch.tensor(4.0)}, kohya_metadata(NO_PREVIEW_LORA, "sd1", 4, 4.0))


@contextlib.contextmanager
def serving(data: Path, *extra_flags: str):
    """app.py on a free port over the data folder ``data``, stopped (SIGINT, then kill) at the end."""
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "app.py", "--data-dir", str(data), "--port", str(port), *extra_flags],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url + "/", proc, timeout=120)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """app.py on a free port over a fresh data folder holding one small checkpoint."""
    data = tmp_path_factory.mktemp("browser_data")
    if not SHAPES_MODEL.exists():  # the shipped model is listed from the repository folder by itself
        from core.models.fixtures import write_tiny_checkpoint

        write_tiny_checkpoint(data, "sd1")
    _write_lora_without_preview(data / "models" / "Lora" / f"{NO_PREVIEW_LORA}.safetensors")
    with serving(data, "--api") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _wait_for_gallery_picture(page, gallery_id: str):
    """The gallery's first picture, once the browser has decoded it (a screenshot shows it)."""
    image = page.locator(f"#{gallery_id} .thumbnail-item img, #{gallery_id} button img").first
    image.wait_for(state="visible", timeout=60_000)
    page.wait_for_function(f"() => document.querySelector('#{gallery_id} img')?.naturalWidth > 0")
    return image


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _open_txt2img(server, browser):
    """A fresh page on the txt2img tab, ready for input."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="en-US")
    page.set_default_timeout(30_000)
    page.goto(server + "/", wait_until="load")
    page.wait_for_selector("#txt2img-generate")
    return page


def test_generate_in_the_browser(server, browser):
    from PIL import Image

    page = _open_txt2img(server, browser)
    assert page.locator("#kiln-checkpoint input").input_value() != ""  # a checkpoint is selected

    page.locator("#txt2img-prompt textarea").fill(PROMPT)
    page.wait_for_function(
        "() => /^\\d+\\/\\d+$/.test(document.querySelector('#txt2img-token-counter').innerText.trim())")
    _set_number(page, "txt2img-steps", 4)
    _set_number(page, "txt2img-width", 64)
    _set_number(page, "txt2img-height", 64)
    page.locator("#txt2img-generate").click()
    image = _wait_for_gallery_picture(page, "txt2img-gallery")
    page.wait_for_function("() => document.querySelector('#txt2img-infotext').innerText.includes('Steps:')")
    page.screenshot(path=str(ARTIFACTS / "tab-txt2img.png"), full_page=True)

    src = image.get_attribute("src")
    png = page.request.get(src if src.startswith("http") else server + src).body()
    served = Image.open(io.BytesIO(png))
    assert served.format == "PNG"
    parameters = served.info.get("parameters", "")
    assert PROMPT in parameters and "Steps: 4" in parameters, parameters
    downloaded = ARTIFACTS / "generated.png"
    downloaded.write_bytes(png)

    # PNG Info reads the same file back and "Send to txt2img" restores what was changed since.
    page.locator("#txt2img-prompt textarea").fill("something else")
    _set_number(page, "txt2img-steps", 10)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(downloaded))
    page.wait_for_function(
        f"() => document.querySelector('#pnginfo-parameters textarea').value.includes({PROMPT!r})")
    page.screenshot(path=str(ARTIFACTS / "tab-pnginfo.png"), full_page=True)
    page.locator("#pnginfo-send-to-txt2img").click()
    page.wait_for_function(f"() => document.querySelector('#txt2img-prompt textarea').value === {PROMPT!r}")
    assert page.locator("#txt2img-steps input[type=number]").input_value() == "4"

    # Send to img2img under the gallery: the picture and its prompt, on the img2img tab.
    page.locator("#txt2img-send-to-img2img").click()
    page.locator("#img2img-image img").wait_for(state="visible")
    page.wait_for_function(f"() => document.querySelector('#img2img-prompt textarea').value === {PROMPT!r}")
    assert page.locator("#img2img-steps input[type=number]").input_value() == "4"

    page.get_by_role("tab", name="Settings").click()
    page.wait_for_selector("#settings-apply")
    page.screenshot(path=str(ARTIFACTS / "tab-settings.png"), full_page=True)

    chinese = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    chinese.goto(server + "/", wait_until="load")
    chinese.get_by_role("button", name="生成").wait_for()
    chinese.wait_for_function("() => document.querySelector('#kiln-checkpoint input').value !== ''")
    chinese.screenshot(path=str(ARTIFACTS / "tab-txt2img-zh-CN.png"), full_page=True)
    chinese.close()
    page.close()


def test_rescale_cfg_slider_reaches_the_infotext_and_comes_back_from_png_info(server, browser):
    page = _open_txt2img(server, browser)
    # Beside CFG Scale, in the same row (Forge's place for it).
    row = page.locator("#txt2img-cfg-row")
    page.wait_for_selector("#txt2img-cfg-row #txt2img-rescale-cfg input[type=number]")
    assert row.locator("#txt2img-cfg").count() == 1 and row.locator("#txt2img-rescale-cfg").count() == 1
    assert "Rescale CFG" in page.locator("#txt2img-rescale-cfg").inner_text()
    # The built-in model is zero-terminal-SNR: the slider starts at its recommended 0.7.
    assert page.locator("#txt2img-rescale-cfg input[type=number]").input_value() == "0.7"

    page.locator("#txt2img-prompt textarea").fill(PROMPT)
    for elem_id, value in (("txt2img-steps", 4), ("txt2img-width", 64), ("txt2img-height", 64),
                           ("txt2img-rescale-cfg", 0.45)):
        _set_number(page, elem_id, value)
    row.screenshot(path=str(ARTIFACTS / "txt2img-cfg-row.png"))
    page.locator("#txt2img-generate").click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img-infotext').innerText.includes('Rescale CFG: 0.45')", timeout=180_000)
    page.screenshot(path=str(ARTIFACTS / "tab-txt2img-rescale-cfg.png"), full_page=True)

    image = page.locator("#txt2img-gallery .thumbnail-item img, #txt2img-gallery button img").first
    src = image.get_attribute("src")
    png = page.request.get(src if src.startswith("http") else server + src).body()
    downloaded = ARTIFACTS / "generated-rescale-cfg.png"
    downloaded.write_bytes(png)
    _set_number(page, "txt2img-rescale-cfg", 0)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(downloaded))
    page.wait_for_function(
        "() => document.querySelector('#pnginfo-parameters textarea').value.includes('Rescale CFG: 0.45')")
    page.locator("#pnginfo-send-to-txt2img").click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img-rescale-cfg input[type=number]').value === '0.45'")
    page.close()


def test_extra_networks_cards_without_a_picture_are_compact_tiles(server, browser):
    from ui.extra_networks import COMPACT_TILE_FILE

    page = _open_txt2img(server, browser)
    tabs = page.locator("#kiln-en-tabs")
    tabs.get_by_role("tab", name="Lora", exact=True).click()
    card = page.locator("#kiln-en-gallery-lora .thumbnail-item", has_text=NO_PREVIEW_LORA)
    card.wait_for(state="visible")
    assert card.inner_text().split() == ["LoRA", NO_PREVIEW_LORA]  # type over name, not a blank tile
    assert card.locator("img").is_hidden()
    tile = card.bounding_box()
    assert tile["height"] < 70 and tile["width"] > 2 * tile["height"], tile
    page.locator("#kiln-extra-networks").screenshot(path=str(ARTIFACTS / "extra-networks-lora.png"))

    tabs.get_by_role("tab", name="Checkpoints", exact=True).click()
    if SHAPES_MODEL.exists():  # the built-in model's card shows its committed preview picture
        shapes = page.locator("#kiln-en-gallery-checkpoint .thumbnail-item", has_text="kiln-shapes-v1")
        shapes.locator("img").wait_for(state="visible")
        page.wait_for_function("""() => [...document.querySelectorAll('#kiln-en-gallery-checkpoint .thumbnail-item')]
            .filter((b) => b.innerText.includes('kiln-shapes-v1')).some((b) => b.querySelector('img').naturalWidth > 0)""")
        assert not shapes.locator("img").get_attribute("src").endswith(COMPACT_TILE_FILE)
        picture = shapes.bounding_box()
        assert picture["height"] > 3 * tile["height"], (picture, tile)
    page.locator("#kiln-extra-networks").screenshot(path=str(ARTIFACTS / "extra-networks-checkpoints.png"))

    # A compact tile is a card like any other: a click puts its tag into the prompt.
    tabs.get_by_role("tab", name="Lora", exact=True).click()
    card.click()
    page.wait_for_function(
        f"() => document.querySelector('#txt2img-prompt textarea').value.includes('<lora:{NO_PREVIEW_LORA}:1>')")
    page.close()


def _red_circle(path: Path, size: int = 64) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill="red")
    image.save(path)
    return path


def _left_half_mask(path: Path, size: int = 64) -> Path:
    from PIL import Image, ImageDraw

    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size // 2 - 1, size - 1), fill=255)
    mask.save(path)
    return path


def _open_tab(page, tab_elem_id: str, label: str) -> None:
    """Click a tab's button (Gradio gives it the id "<tab elem_id>-button"), checking its label."""
    button = page.locator(f"#{tab_elem_id}-button")
    assert button.inner_text().strip() == label
    button.click()


def _small_fast_settings(page, prefix: str) -> None:
    for elem_id, value in ((f"{prefix}-steps", 4), (f"{prefix}-width", 64), (f"{prefix}-height", 64)):
        _set_number(page, elem_id, value)


def test_img2img_and_inpaint_in_the_browser(server, browser, tmp_path):
    picture = _red_circle(tmp_path / "red-circle.png")
    mask = _left_half_mask(tmp_path / "mask.png")
    page = _open_txt2img(server, browser)
    _open_tab(page, "tab-img2img", "img2img")
    page.wait_for_selector("#img2img-generate")
    # No picture yet: the error box says which field is missing.
    page.locator("#img2img-generate").click()
    page.wait_for_function("() => document.querySelector('#img2img-error').innerText.includes('init_images')")

    page.locator("#img2img-prompt textarea").fill(PROMPT)
    page.locator("#img2img-image input[type=file]").set_input_files(str(picture))
    page.wait_for_selector("#img2img-image img")
    _small_fast_settings(page, "img2img")
    _set_number(page, "img2img-denoising", 0.3)
    assert page.locator("#img2img-mask-controls").is_hidden()  # mask controls only on the inpaint tabs
    page.locator("#img2img-generate").click()
    _wait_for_gallery_picture(page, "img2img-gallery")
    page.wait_for_function(
        "() => document.querySelector('#img2img-infotext').innerText.includes('Denoising strength: 0.3')")
    assert page.locator("#img2img-error").inner_text().strip() == ""
    page.screenshot(path=str(ARTIFACTS / "tab-img2img.png"), full_page=True)

    # Inpaint upload: a picture and a mask of the same size.
    _open_tab(page, "img2img-mode-inpaint-upload", "Inpaint upload")
    page.locator("#img2img-mask-controls").wait_for(state="visible")
    assert page.locator("#img2img-padding input[type=number]").input_value() == "32"
    page.locator("#img2img-upload-image input[type=file]").set_input_files(str(picture))
    page.locator("#img2img-upload-mask input[type=file]").set_input_files(str(mask))
    page.wait_for_selector("#img2img-upload-mask img")
    page.locator("#img2img-generate").click()
    page.wait_for_function(
        "() => document.querySelector('#img2img-infotext').innerText.includes('Mask blur: 4')", timeout=60_000)
    _wait_for_gallery_picture(page, "img2img-gallery")
    page.screenshot(path=str(ARTIFACTS / "tab-img2img-inpaint-upload.png"), full_page=True)

    # PNG Info sends the result's picture and settings back to img2img.
    src = page.locator("#img2img-gallery .thumbnail-item img, #img2img-gallery button img").first.get_attribute("src")
    inpainted = tmp_path / "inpainted.png"
    inpainted.write_bytes(page.request.get(src if src.startswith("http") else server + src).body())
    _set_number(page, "img2img-denoising", 0.9)
    _open_tab(page, "tab-pnginfo", "PNG Info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(inpainted))
    page.wait_for_function("() => document.querySelector('#pnginfo-parameters textarea').value.includes('Mask blur')")
    page.locator("#pnginfo-send-to-img2img").click()
    page.locator("#img2img-image img").wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('#img2img-denoising input[type=number]').value === '0.3'")
    assert page.locator("#img2img-mode-img2img-button").get_attribute("aria-selected") == "true"

    # Send to inpaint: the editor shows the picture; a brush stroke is the mask. "Only masked"
    # proves it: a blank mask would fall back to plain img2img without "Inpaint area".
    page.locator("#img2img-send-to-inpaint").click()
    canvas = page.locator("#img2img-inpaint-editor canvas").first
    canvas.wait_for(state="visible")
    page.locator("#img2img-mask-controls").wait_for(state="visible")
    page.wait_for_timeout(500)  # the editor lays the picture out before it takes strokes
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 40, y)
    page.mouse.down()
    for step in range(8):
        page.mouse.move(x - 40 + step * 10, y + step % 2 * 3)
    page.mouse.up()
    page.locator("#img2img-inpaint-area label", has_text="Only masked").click()
    page.locator("#img2img-generate").click()
    page.wait_for_function(
        "() => document.querySelector('#img2img-infotext').innerText.includes('Inpaint area: Only masked')",
        timeout=60_000)
    _wait_for_gallery_picture(page, "img2img-gallery")
    assert page.locator("#img2img-prompt textarea").input_value() == PROMPT
    page.screenshot(path=str(ARTIFACTS / "tab-img2img-inpaint.png"), full_page=True)

    chinese = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    chinese.goto(server + "/", wait_until="load")
    chinese.get_by_role("button", name="生成").first.wait_for()
    _open_tab(chinese, "tab-img2img", "图生图")
    chinese.locator("#img2img-image").wait_for(state="visible")
    chinese.screenshot(path=str(ARTIFACTS / "tab-img2img-zh-CN.png"), full_page=True)
    _open_tab(chinese, "img2img-mode-inpaint", "局部重绘")
    chinese.locator("#img2img-mask-controls").wait_for(state="visible")
    chinese.screenshot(path=str(ARTIFACTS / "tab-img2img-inpaint-zh-CN.png"), full_page=True)
    _open_tab(chinese, "img2img-mode-inpaint-upload", "上传重绘蒙版")
    chinese.screenshot(path=str(ARTIFACTS / "tab-img2img-inpaint-upload-zh-CN.png"), full_page=True)
    _open_tab(chinese, "img2img-mode-batch", "批量处理")
    chinese.locator("#img2img-batch-png-info").get_by_text("PNG 图片信息").click()
    chinese.locator("#img2img-batch-png-info-fields").wait_for(state="visible")
    chinese.screenshot(path=str(ARTIFACTS / "tab-img2img-batch-zh-CN.png"), full_page=True)
    chinese.close()
    page.close()


def test_the_page_answers_while_the_worker_is_busy(server, browser):
    """The web server never waits for the GPU worker: with a long API job running, the page, its
    HTML and /progress answer at once (measured here, bounded loosely for a loaded CI machine)."""
    import threading
    import time

    import httpx

    long_job = threading.Thread(target=lambda: httpx.post(
        server + "/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 150, "width": 64, "height": 64},
        timeout=300), daemon=True)
    long_job.start()
    try:
        deadline = time.monotonic() + 60
        while httpx.get(server + "/sdapi/v1/progress").json()["state"]["sampling_step"] < 2:
            assert time.monotonic() < deadline, "the long job never started"
            time.sleep(0.1)
        started = time.monotonic()
        assert httpx.get(server + "/", timeout=10).status_code == 200
        html = time.monotonic() - started
        started = time.monotonic()
        httpx.get(server + "/sdapi/v1/progress", timeout=10)
        progress = time.monotonic() - started
        started = time.monotonic()
        page = _open_txt2img(server, browser)
        interactive = time.monotonic() - started
        busy = httpx.get(server + "/sdapi/v1/progress").json()["state"]
        print(f"while busy: HTML {html:.3f} s, /progress {progress:.3f} s, page ready {interactive:.2f} s")
        assert busy["job_count"] >= 1  # still running: these answers did not wait for it
        assert html < 1.0 and progress < 1.0
        assert interactive < 10.0
        page.close()
    finally:
        httpx.post(server + "/sdapi/v1/interrupt")
        long_job.join(60)


def _choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` in a Gradio dropdown (open it, click the entry)."""
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li[role=option]", has_text=option).first.click()


def test_xyz_plot_from_the_script_dropdown(server, browser):
    from PIL import Image

    page = _open_txt2img(server, browser)
    page.locator("#txt2img-prompt textarea").fill(PROMPT)
    _small_fast_settings(page, "txt2img")
    assert not page.locator("#txt2img-xyz").is_visible()
    _choose(page, "txt2img-script", "X/Y/Z plot")
    page.locator("#txt2img-xyz").wait_for(state="visible")
    # A list axis shows its choices; 📒 fills in every one of them.
    _choose(page, "txt2img-xyz-y-type", "Sampler")
    page.locator("#txt2img-xyz-y-fill").click()
    page.wait_for_function("() => document.querySelectorAll('#txt2img-xyz-y-dropdown .token').length > 5")
    page.screenshot(path=str(ARTIFACTS / "txt2img-xyz-controls.png"), full_page=True)
    # A 2 × 2 grid: seeds on X, steps on Y.
    page.locator("#txt2img-xyz-x-values textarea, #txt2img-xyz-x-values input").first.fill("1, 2")
    _choose(page, "txt2img-xyz-y-type", "Steps")
    page.locator("#txt2img-xyz-y-values").wait_for(state="visible")
    page.locator("#txt2img-xyz-y-values textarea, #txt2img-xyz-y-values input").first.fill("1, 3")
    page.locator("#txt2img-generate").click()
    image = _wait_for_gallery_picture(page, "txt2img-gallery")
    page.screenshot(path=str(ARTIFACTS / "txt2img-xyz-grid.png"), full_page=True)
    src = image.get_attribute("src")
    grid = Image.open(io.BytesIO(page.request.get(src if src.startswith("http") else server + src).body()))
    assert grid.width > 2 * 64 and grid.height > 2 * 64, grid.size
    info = grid.info.get("parameters", "")
    assert "Script: X/Y/Z plot" in info and "X Type: Seed" in info and "Y Type: Steps" in info, info
    page.close()

    chinese = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    chinese.goto(server + "/", wait_until="load")
    chinese.wait_for_selector("#txt2img-generate")
    _choose(chinese, "txt2img-script", "X/Y/Z 图表")
    chinese.locator("#txt2img-xyz").wait_for(state="visible")
    assert "X轴类型" in chinese.locator("#txt2img-xyz").inner_text()
    chinese.screenshot(path=str(ARTIFACTS / "txt2img-xyz-zh-CN.png"), full_page=True)
    chinese.close()
