"""Dataset › Preprocess: a source folder → a new destination folder of W×H training pictures.

Widgets over core.dataset.preprocess.run_preprocess (the same path as Extras › Batch from
folder and the CLI). The run is a "preprocess" job on the JobQueue; the handler only polls it.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import JobInterrupted, JobSkipped, KilnError
from ui.dataset.strings import Strings

if TYPE_CHECKING:
    from core.dataset.preprocess import PreprocessOptions, PreprocessReport
    from core.engine import Engine
    from core.jobs import JobContext, JobQueue

TITLE = "Preprocess"

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "Preprocess": "Preprocess",
        "Source directory": "Source directory",
        "Destination directory": "Destination directory",
        "Folder on the server with the original pictures (never changed)":
            "Folder on the server with the original pictures (never changed)",
        "A new folder for the results (not the source, not inside it)":
            "A new folder for the results (not the source, not inside it)",
        "Width": "Width",
        "Height": "Height",
        "Resize mode": "Resize mode",
        "Crop and resize": "Crop and resize",
        "Resize and fill": "Resize and fill",
        "Just resize": "Just resize",
        "Create flipped copies": "Create flipped copies",
        "Split oversized images": "Split oversized images",
        "Split image threshold": "Split image threshold",
        "Split image overlap ratio": "Split image overlap ratio",
        "Auto focal point crop": "Auto focal point crop",
        "Focal point face weight": "Focal point face weight",
        "Focal point entropy weight": "Focal point entropy weight",
        "Focal point edges weight": "Focal point edges weight",
        "Auto-sized crop": "Auto-sized crop",
        "Dimension lower bound": "Dimension lower bound",
        "Dimension upper bound": "Dimension upper bound",
        "Upscale smaller images first with": "Upscale smaller images first with",
        "Include subfolders": "Include subfolders",
        "Background for transparent pictures": "Background for transparent pictures",
        "Caption with": "Caption with",
        "None (copy existing captions)": "None (copy existing captions)",
        "Tag threshold": "Tag threshold",
        "Additional tags (trigger word first)": "Additional tags (trigger word first)",
        "Stop": "Stop",
        "Preprocessing": "Preprocessing",
        "pictures written to": "pictures written to",
        "captions": "captions",
        "already done": "already done",
        "skipped": "skipped",
        "unreadable": "unreadable",
        "stopped; run again to continue": "stopped; run again to continue",
    },
    "zh-CN": {
        "Preprocess": "图像预处理",
        "Source directory": "源目录",
        "Destination directory": "目标目录",
        "Folder on the server with the original pictures (never changed)": "服务器上存放原图的文件夹（原图不会被修改）",
        "A new folder for the results (not the source, not inside it)": "存放结果的新文件夹（不能是源目录，也不能在源目录内）",
        "Width": "宽度",
        "Height": "高度",
        "Resize mode": "缩放模式",
        "Crop and resize": "裁剪后缩放",
        "Resize and fill": "缩放后填充空白",
        "Just resize": "仅调整大小",
        "Create flipped copies": "创建水平翻转副本",
        "Split oversized images": "分割过大的图像",
        "Split image threshold": "图像分割阈值",
        "Split image overlap ratio": "图像分割重叠比率",
        "Auto focal point crop": "自动焦点裁切",
        "Focal point face weight": "焦点面部权重",
        "Focal point entropy weight": "焦点熵权重",
        "Focal point edges weight": "焦点线条权重",
        "Auto-sized crop": "自动按比例裁剪缩放",
        "Dimension lower bound": "维度下限",
        "Dimension upper bound": "维度上限",
        "Upscale smaller images first with": "小图先用此放大算法放大",
        "Include subfolders": "包含子文件夹",
        "Background for transparent pictures": "透明图片的背景颜色",
        "Caption with": "使用反推模型生成标注",
        "None (copy existing captions)": "无（复制已有标注）",
        "Tag threshold": "标签阈值",
        "Additional tags (trigger word first)": "附加标签（触发词在前）",
        "Stop": "停止",
        "Preprocessing": "预处理中",
        "pictures written to": "张图片已写入",
        "captions": "个标注",
        "already done": "张已完成",
        "skipped": "张跳过",
        "unreadable": "张无法读取",
        "stopped; run again to continue": "已停止；再次运行可继续",
    },
}

MODE_LABELS = (("Crop and resize", "crop"), ("Resize and fill", "fill"), ("Just resize", "resize"))


_STRINGS = Strings(STRINGS)
tr = _STRINGS.tr  # a label the browser translates (KeyError for a key without an entry)


def say(key: str, request: Any = None) -> str:
    """Run-time text in the browser's language (``STRINGS`` of this module)."""
    return _STRINGS.say(key, request)


def report_html(report: PreprocessReport, request: Any = None) -> str:
    """The summary line and one line per file not processed (name and reason)."""
    parts = [f"{len(report.written)} {say('pictures written to', request)} {report.destination}"]
    for count, key in ((len(report.captions), "captions"), (len(report.done_before), "already done"),
                       (len(report.skipped), "skipped"), (len(report.broken), "unreadable")):
        if count:
            parts.append(f"{count} {say(key, request)}")
    text = ", ".join(parts)
    if report.stopped:
        text += f" ({say('stopped; run again to continue', request)})"
    lines = "<br>".join(html.escape(line) for line in report.problems())
    return (f'<div class="kiln-notice" id="preprocess-summary">{html.escape(text)}</div>'
            + (f'<div class="kiln-error" id="preprocess-problems">{lines}</div>' if lines else ""))


def preprocess_job(source: str, destination: str, options: PreprocessOptions, upscale: Callable | None,
                   label: str) -> Callable[[JobContext], PreprocessReport]:
    """The job function: run_preprocess with the job's progress and Stop/Interrupt honoured
    between pictures (finished pictures are kept; a rerun continues)."""
    from core.dataset.preprocess import PreprocessProgress, run_preprocess

    def fn(ctx: JobContext) -> PreprocessReport:
        def progress(p: PreprocessProgress) -> None:
            if ctx.job.progress.total_steps != p.total:
                ctx.set_total(p.total, job_count=p.total)
            ctx.set_text(f"{label} {p.index}/{p.total}" + (f" · {p.path.name}" if p.path else ""))
            behind = p.index - ctx.job.progress.step
            if behind > 0:
                try:
                    ctx.advance(behind)
                except (JobInterrupted, JobSkipped):
                    pass  # seen by should_stop before the next picture

        return run_preprocess(source, destination, options, upscale=upscale, progress=progress,
                              should_stop=lambda: ctx.stop_requested)

    return fn


def parse_colour(value: str | None) -> tuple[int, int, int]:
    """The colour picker's value ("#ffffff", or "rgba(255, 255, 255, 1)" with float parts) as RGB."""
    import re

    from PIL import ImageColor

    text = (value or "#ffffff").strip()
    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        numbers = [float(n) for n in re.findall(r"[\d.]+", text)[:3]]
        if len(numbers) < 3:
            raise ValueError(f"not a colour: {value!r}") from None
        return tuple(max(0, min(255, round(n))) for n in numbers)  # type: ignore[return-value]


def upscaler_choices(engine: Engine) -> list[str]:
    from core.generation.upscale import IMAGE_RESAMPLERS

    try:
        models = engine.upscalers.names()
    except Exception:  # a broken ESRGAN folder must not take the tab down
        models = []
    return [*IMAGE_RESAMPLERS, *models]


def captioner_for(engine: Engine, model: str | None, threshold: float, additional: str):
    """The Tag tab's tagger as the preprocess caption callback (None: captions are only copied).
    It runs inside the preprocess job, on the worker, through the engine's tagger cache."""
    if not model:
        return None
    from core.dataset.taggers.common import TagOptions, parse_tag_list
    from core.dataset.taggers.service import cache_for

    tagger = cache_for(engine).get(model)  # a missing model is a KilnError here, before the job
    options = TagOptions(general_threshold=float(threshold), additional=parse_tag_list(additional))
    return lambda picture: tagger.tag([picture], options)[0].text


def build(engine: Engine, queue: JobQueue) -> None:
    from ui.common import error_html, job_error_message, progress_html, ui_owner, watch_job

    with gr.Row():
        src = gr.Textbox(label=tr("Source directory"), placeholder=tr("Folder on the server with the original pictures (never changed)"),
                         elem_id="preprocess-src")
        dst = gr.Textbox(label=tr("Destination directory"),
                         placeholder=tr("A new folder for the results (not the source, not inside it)"),
                         elem_id="preprocess-dst")
    with gr.Row():
        width = gr.Slider(64, 2048, value=512, step=8, label=tr("Width"), elem_id="preprocess-width")
        height = gr.Slider(64, 2048, value=512, step=8, label=tr("Height"), elem_id="preprocess-height")
    mode = gr.Radio([(tr(label), value) for label, value in MODE_LABELS], value="crop", label=tr("Resize mode"),
                    elem_id="preprocess-mode")
    with gr.Row():
        flip = gr.Checkbox(False, label=tr("Create flipped copies"), elem_id="preprocess-flip")
        split = gr.Checkbox(False, label=tr("Split oversized images"), elem_id="preprocess-split")
        focal = gr.Checkbox(False, label=tr("Auto focal point crop"), elem_id="preprocess-focal")
        auto = gr.Checkbox(False, label=tr("Auto-sized crop"), elem_id="preprocess-auto-size")
        recursive = gr.Checkbox(False, label=tr("Include subfolders"), elem_id="preprocess-recursive")
    with gr.Row(visible=False) as split_row:
        threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=tr("Split image threshold"))
        overlap = gr.Slider(0.0, 0.9, value=0.2, step=0.05, label=tr("Split image overlap ratio"))
    with gr.Row(visible=False) as focal_row:
        face_w = gr.Slider(0.0, 1.0, value=0.9, step=0.05, label=tr("Focal point face weight"))
        entropy_w = gr.Slider(0.0, 1.0, value=0.15, step=0.05, label=tr("Focal point entropy weight"))
        edges_w = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=tr("Focal point edges weight"))
    with gr.Row(visible=False) as auto_row:
        min_dim = gr.Slider(64, 2048, value=384, step=64, label=tr("Dimension lower bound"))
        max_dim = gr.Slider(64, 2048, value=768, step=64, label=tr("Dimension upper bound"))
    with gr.Row():
        upscaler = gr.Dropdown(upscaler_choices(engine), value="Lanczos",
                               label=tr("Upscale smaller images first with"), elem_id="preprocess-upscaler")
        background = gr.ColorPicker("#ffffff", label=tr("Background for transparent pictures"),
                                    elem_id="preprocess-background")
    with gr.Row():
        from ui.dataset.tag import model_choices

        captioner = gr.Dropdown([(tr("None (copy existing captions)"), ""), *model_choices(engine)], value="",
                                label=tr("Caption with"), elem_id="preprocess-caption-model")
        tag_threshold = gr.Slider(0.0, 1.0, value=0.35, step=0.01, label=tr("Tag threshold"),
                                  elem_id="preprocess-caption-threshold")
        additional = gr.Textbox(label=tr("Additional tags (trigger word first)"), max_lines=1,
                                elem_id="preprocess-caption-additional")
    with gr.Row():
        run = gr.Button(tr("Preprocess"), variant="primary", elem_id="preprocess-run")
        stop = gr.Button(tr("Stop"), elem_id="preprocess-stop")
    progress = gr.HTML(elem_id="preprocess-progress")
    result = gr.HTML(elem_id="preprocess-result")

    for box, row in ((split, split_row), (focal, focal_row), (auto, auto_row)):
        box.change(lambda on: gr.update(visible=on), inputs=box, outputs=row, show_progress="hidden")

    def start(src_dir, dst_dir, w, h, mode_value, flip_on, split_on, thr, ovl, focal_on, fw, ew, gw, auto_on,
              lo, hi, rec, up_name, colour, caption_model, caption_threshold, caption_extra, request: gr.Request):

        from core.dataset.focal import FocalWeights
        from core.dataset.preprocess import PreprocessOptions, check_folders

        try:
            check_folders(src_dir or "", dst_dir or "")
            fill = parse_colour(colour)
            options = PreprocessOptions(
                width=int(w), height=int(h), mode=mode_value or "crop", split=bool(split_on),
                split_threshold=float(thr), overlap_ratio=float(ovl), focal=bool(focal_on),
                focal_weights=FocalWeights(float(fw), float(ew), float(gw)), auto_size=bool(auto_on),
                auto_min_dim=int(lo), auto_max_dim=int(hi), auto_max_area=int(hi) * int(hi), flip=bool(flip_on),
                upscaler=up_name or None, recursive=bool(rec), background=fill,
                caption=captioner_for(engine, caption_model, caption_threshold, caption_extra))
        except (KilnError, ValueError) as exc:
            yield "", error_html(exc.message if isinstance(exc, KilnError) else str(exc), request)
            return
        fn = preprocess_job(src_dir, dst_dir, options, engine.upscale_image, say("Preprocessing", request))
        job = queue.submit(fn, description=f"preprocess {src_dir}", owner=ui_owner(request), kind="preprocess")
        for status in watch_job(queue, job):
            yield progress_html(status, request), gr.update()
        message = job_error_message(job)
        if message:
            yield "", error_html(message, request)
        else:
            yield "", report_html(job.result, request)

    run.click(start, inputs=[src, dst, width, height, mode, flip, split, threshold, overlap, focal, face_w,
                             entropy_w, edges_w, auto, min_dim, max_dim, recursive, upscaler, background,
                             captioner, tag_threshold, additional],
              outputs=[progress, result], show_progress="hidden")

    def stop_mine(request: gr.Request) -> None:
        queue.stop(owner=ui_owner(request))

    stop.click(stop_mine, queue=False, show_progress="hidden")
