"""Extras (the WebUI's 附加功能 tab): upscale one picture ×N or to W×H with upscaler 1 (+ upscaler 2
at a visibility), or a whole folder through the same run_preprocess path as Dataset › Preprocess.

Both run as "extras" jobs on the JobQueue (model upscalers need the worker's device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.i18n import I18nData

from core.errors import KilnError
from ui.dataset.strings import Strings

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "Extras": "Extras",
        "Single Image": "Single Image",
        "Batch from Directory": "Batch from Directory",
        "Source": "Source",
        "Input directory": "Input directory",
        "Output directory": "Output directory",
        "Scale by": "Scale by",
        "Scale to": "Scale to",
        "Resize": "Resize",
        "Resize mode": "Resize mode",
        "Crop to fit": "Crop to fit",
        "Upscaler 1": "Upscaler 1",
        "Upscaler 2": "Upscaler 2",
        "Upscaler 2 visibility": "Upscaler 2 visibility",
        "Create flipped copies": "Create flipped copies",
        "Generate": "Generate",
        "Result": "Result",
        "Upscaling": "Upscaling",
        "Drop a picture first.": "Drop a picture first.",
    },
    "zh-CN": {
        "Extras": "附加功能",
        "Single Image": "单张图片",
        "Batch from Directory": "从目录进行批量处理",
        "Source": "来源",
        "Input directory": "输入目录",
        "Output directory": "输出目录",
        "Scale by": "等比缩放",
        "Scale to": "指定分辨率缩放",
        "Resize": "缩放比例",
        "Resize mode": "缩放模式",
        "Crop to fit": "裁剪以适应宽高比",
        "Upscaler 1": "放大算法 1",
        "Upscaler 2": "放大算法 2",
        "Upscaler 2 visibility": "放大算法 2 强度",
        "Create flipped copies": "创建水平翻转副本",
        "Generate": "生成",
        "Result": "结果",
        "Upscaling": "放大中",
        "Drop a picture first.": "请先放入一张图片。",
    },
}


_STRINGS = Strings(STRINGS)
tr = _STRINGS.tr  # a label the browser translates (KeyError for a key without an entry)


def say(key: str, request: Any = None) -> str:
    """Run-time text in the language of the browser that sent ``request``."""
    return _STRINGS.say(key, request)


def upscaler_choices(engine: Engine) -> list[str]:
    """The WebUI's Extras list: "None" (leave as is), the resamplers, then ESRGAN files."""
    from ui.dataset.preprocess import upscaler_choices as sized

    return ["None", *[name for name in sized(engine) if name != "None"]]


def _settings(mode, resize, w, h, crop, up1, up2, vis):
    from core.dataset.upscale import ExtrasUpscale

    return ExtrasUpscale(resize_mode=int(mode), upscaling_resize=float(resize), upscaling_resize_w=int(w),
                         upscaling_resize_h=int(h), upscaling_crop=bool(crop), upscaler_1=up1 or "None",
                         upscaler_2=up2 or "None", extras_upscaler_2_visibility=float(vis))


def build_extras_tab(engine: Engine, queue: JobQueue) -> None:
    from ui.common import error_html, infotext_html, job_error_message, progress_html, ui_owner, watch_job
    from ui.dataset.preprocess import preprocess_job, report_html

    choices = upscaler_choices(engine)
    with gr.Row(equal_height=False):
        with gr.Column():
            with gr.Tabs(elem_id="extras-tabs"):
                with gr.Tab(tr("Single Image"), id="extras-single", elem_id="tab-extras-single") as single_tab:
                    image = gr.Image(label=tr("Source"), type="pil", sources=["upload", "clipboard"],
                                     elem_id="extras-image", height=320)
                with gr.Tab(tr("Batch from Directory"), id="extras-batch", elem_id="tab-extras-batch") as batch_tab:
                    src = gr.Textbox(label=tr("Input directory"), elem_id="extras-batch-src")
                    dst = gr.Textbox(label=tr("Output directory"), elem_id="extras-batch-dst")
                    flip = gr.Checkbox(False, label=tr("Create flipped copies"), elem_id="extras-batch-flip")
            mode = gr.Radio([(tr("Scale by"), 0), (tr("Scale to"), 1)], value=0, label=tr("Resize mode"),
                            elem_id="extras-resize-mode")
            resize = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label=tr("Resize"), elem_id="extras-upscaling-resize")
            with gr.Row():
                w = gr.Slider(64, 8192, value=512, step=8, label=I18nData("Width"), elem_id="extras-resize-w")
                h = gr.Slider(64, 8192, value=512, step=8, label=I18nData("Height"), elem_id="extras-resize-h")
                crop = gr.Checkbox(True, label=tr("Crop to fit"), elem_id="extras-crop")
            up1 = gr.Dropdown(choices, value="Lanczos", label=tr("Upscaler 1"), elem_id="extras-upscaler-1")
            with gr.Row():
                up2 = gr.Dropdown(choices, value="None", label=tr("Upscaler 2"), elem_id="extras-upscaler-2")
                vis = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label=tr("Upscaler 2 visibility"),
                                elem_id="extras-upscaler-2-visibility")
            with gr.Row():
                single_go = gr.Button(tr("Generate"), variant="primary", elem_id="extras-generate")
                batch_go = gr.Button(tr("Generate"), variant="primary", elem_id="extras-batch-generate",
                                     visible=False)
        with gr.Column():
            progress = gr.HTML(elem_id="extras-progress")
            out = gr.Image(label=tr("Result"), type="pil", interactive=False, elem_id="extras-result", height=420)
            info = gr.HTML(elem_id="extras-info")

    def single(picture, m, r, ww, hh, c, u1, u2, v, request: gr.Request):
        from core.dataset.upscale import extras_upscale

        if picture is None:
            yield "", None, error_html(say("Drop a picture first.", request), request)
            return
        try:
            settings = _settings(m, r, ww, hh, c, u1, u2, v)
        except KilnError as exc:
            yield "", None, error_html(exc.message, request)
            return
        job = queue.submit(lambda _ctx: extras_upscale(picture.convert("RGB"), settings, engine.upscale_image),
                           description="extras: upscale", owner=ui_owner(request), kind="extras")
        for status in watch_job(queue, job):
            yield progress_html(status, request), gr.update(), gr.update()
        message = job_error_message(job)
        if message:
            yield "", None, error_html(message, request)
            return
        result, lines = job.result
        text = ", ".join(f"{k}: {v}" for k, v in lines.items())
        yield "", result, infotext_html(text)

    def batch(src_dir, dst_dir, flip_on, m, r, ww, hh, c, u1, u2, v, request: gr.Request):
        from core.dataset.preprocess import PreprocessOptions, check_folders

        try:
            check_folders(src_dir or "", dst_dir or "")
            options = PreprocessOptions(extras=_settings(m, r, ww, hh, c, u1, u2, v), flip=bool(flip_on))
        except KilnError as exc:
            yield "", gr.update(), error_html(exc.message, request)
            return
        fn = preprocess_job(src_dir, dst_dir, options, engine.upscale_image, say("Upscaling", request))
        job = queue.submit(fn, description=f"extras: batch {src_dir}", owner=ui_owner(request), kind="extras")
        for status in watch_job(queue, job):
            yield progress_html(status, request), gr.update(), gr.update()
        message = job_error_message(job)
        yield "", gr.update(), error_html(message, request) if message else report_html(job.result, request)

    settings_inputs = [mode, resize, w, h, crop, up1, up2, vis]
    single_go.click(single, inputs=[image, *settings_inputs], outputs=[progress, out, info], show_progress="hidden")
    batch_go.click(batch, inputs=[src, dst, flip, *settings_inputs], outputs=[progress, out, info],
                   show_progress="hidden")
    # One Generate button per sub-tab, as the WebUI runs the one of the selected tab.
    single_tab.select(lambda: (gr.update(visible=True), gr.update(visible=False)), outputs=[single_go, batch_go],
                      show_progress="hidden")
    batch_tab.select(lambda: (gr.update(visible=False), gr.update(visible=True)), outputs=[single_go, batch_go],
                     show_progress="hidden")
