"""Dataset › Tag: WD14 / DeepBooru tags and BLIP / GIT captions for one picture or a whole folder.

One picture shows its tags with their scores (a gr.Label) and the caption text; a folder runs
as a "tag" job on the queue (core/dataset/taggers/service.py) whose progress, current picture
and tags the page polls. The model code lives in core/dataset/taggers/; this module only wires.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.dataset.tag_folder import MODES, TagFolderOptions
from core.dataset.taggers.common import CaptionOptions, TagOptions, parse_tag_list
from core.errors import KilnError
from ui.dataset.strings import Strings
from ui.i18n import localize_on_load

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

TITLE = "dataset.tag.title"
SORTS = ("confidence", "alphabetical", "model")

# The WebUI's and the wd14-tagger extension's Chinese terms: 反推 (interrogate), 阈值 (threshold),
# 附加标签 (additional tags), 排除标签 (exclude tags), 标签器 (tagger).
# Where the models go (core.dataset.taggers.missing_model_message's wording, for the page in both languages).
MISSING_MODELS = ("Put a WD14 tagger's model.onnx and selected_tags.csv into {tagger_dir}/<name>/ (e.g. from "
                  "SmilingWolf/wd-vit-tagger-v3), DeepBooru's model-resnet_custom_v3.pt (AUTOMATIC1111/"
                  "TorchDeepDanbooru) into {deepbooru_dir}/, or a BLIP / GIT captioning folder (config.json, "
                  "model.safetensors, processor and tokenizer files, e.g. Salesforce/blip-image-captioning-large) "
                  "into {blip_dir}/<name>/.")

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        TITLE: "Tag",
        "dataset.tag.model": "Tagger / captioner",
        "dataset.tag.refresh": "🔄",
        "dataset.tag.options": "Options",
        "dataset.tag.general_threshold": "Threshold (general tags; DeepBooru)",
        "dataset.tag.character_threshold": "Character threshold (WD14)",
        "dataset.tag.general_mcut": "MCut threshold for general tags",
        "dataset.tag.character_mcut": "MCut threshold for character tags",
        "dataset.tag.include_ratings": "Add the rating tag first",
        "dataset.tag.character_first": "Character tags first",
        "dataset.tag.replace_underscore": "Replace underscores with spaces",
        "dataset.tag.escape_brackets": "Escape brackets",
        "dataset.tag.sort": "Sort tags by",
        "dataset.tag.sort.confidence": "Confidence",
        "dataset.tag.sort.alphabetical": "Name",
        "dataset.tag.sort.model": "Model order",
        "dataset.tag.max_tags": "Max tags (0 = no limit)",
        "dataset.tag.additional": "Additional tags (trigger word, put first)",
        "dataset.tag.exclude": "Exclude tags (comma separated)",
        "dataset.tag.caption_options": "BLIP / GIT captions",
        "dataset.tag.num_beams": "Beams (beam search)",
        "dataset.tag.nucleus": "Nucleus sampling",
        "dataset.tag.top_p": "Top p",
        "dataset.tag.min_length": "Min length",
        "dataset.tag.max_length": "Max length",
        "dataset.tag.single": "Single image",
        "dataset.tag.image": "Image",
        "dataset.tag.interrogate": "Interrogate",
        "dataset.tag.tags": "Tags",
        "dataset.tag.ratings": "Ratings",
        "dataset.tag.caption": "Caption",
        "dataset.tag.batch": "Batch folder",
        "dataset.tag.folder": "Folder of images",
        "dataset.tag.mode": "Existing captions",
        "dataset.tag.mode.overwrite": "Overwrite",
        "dataset.tag.mode.append": "Append",
        "dataset.tag.mode.prepend": "Prepend",
        "dataset.tag.mode.skip": "Skip",
        "dataset.tag.extension": "Caption file extension",
        "dataset.tag.batch_size": "Batch size",
        "dataset.tag.recursive": "Include sub-folders",
        "dataset.tag.start": "Tag folder",
        "dataset.tag.stop": "Stop",
        "dataset.tag.log": "Result",
        "dataset.tag.no_model": "No tagger installed.",
        "dataset.tag.where_models_go": MISSING_MODELS,
        "dataset.tag.choose_folder": "Enter the folder of images first.",
        "dataset.tag.choose_image": "Drop a picture first.",
        "dataset.tag.unreadable": "unreadable, skipped",
    },
    "zh-CN": {
        TITLE: "打标",
        "dataset.tag.model": "反推模型(标签器 / 描述模型)",
        "dataset.tag.refresh": "🔄",
        "dataset.tag.options": "选项",
        "dataset.tag.general_threshold": "阈值(普通标签;DeepBooru)",
        "dataset.tag.character_threshold": "角色标签阈值(WD14)",
        "dataset.tag.general_mcut": "普通标签使用 MCut 阈值",
        "dataset.tag.character_mcut": "角色标签使用 MCut 阈值",
        "dataset.tag.include_ratings": "在开头加入分级标签",
        "dataset.tag.character_first": "角色标签放在最前",
        "dataset.tag.replace_underscore": "使用空格代替下划线",
        "dataset.tag.escape_brackets": "转义括号",
        "dataset.tag.sort": "标签排序",
        "dataset.tag.sort.confidence": "按置信度",
        "dataset.tag.sort.alphabetical": "按名称",
        "dataset.tag.sort.model": "按模型顺序",
        "dataset.tag.max_tags": "最多标签数(0 = 不限)",
        "dataset.tag.additional": "附加标签(触发词,放在最前)",
        "dataset.tag.exclude": "排除标签(逗号分隔)",
        "dataset.tag.caption_options": "BLIP / GIT 描述",
        "dataset.tag.num_beams": "集束数(Beam search)",
        "dataset.tag.nucleus": "核采样(Nucleus sampling)",
        "dataset.tag.top_p": "Top p",
        "dataset.tag.min_length": "最短长度",
        "dataset.tag.max_length": "最长长度",
        "dataset.tag.single": "单张图片",
        "dataset.tag.image": "图片",
        "dataset.tag.interrogate": "反推",
        "dataset.tag.tags": "标签",
        "dataset.tag.ratings": "分级",
        "dataset.tag.caption": "描述文本",
        "dataset.tag.batch": "批量处理文件夹",
        "dataset.tag.folder": "图片文件夹",
        "dataset.tag.mode": "已有的描述文件",
        "dataset.tag.mode.overwrite": "覆盖",
        "dataset.tag.mode.append": "追加到末尾",
        "dataset.tag.mode.prepend": "添加到开头",
        "dataset.tag.mode.skip": "跳过",
        "dataset.tag.extension": "描述文件扩展名",
        "dataset.tag.batch_size": "批量大小",
        "dataset.tag.recursive": "包括子文件夹",
        "dataset.tag.start": "批量打标",
        "dataset.tag.stop": "停止",
        "dataset.tag.log": "结果",
        "dataset.tag.no_model": "没有安装反推模型。",
        "dataset.tag.where_models_go": (
            "请将 WD14 标签器的 model.onnx 和 selected_tags.csv 放入 {tagger_dir}/<名称>/"
            "（例如来自 SmilingWolf/wd-vit-tagger-v3），将 DeepBooru 的 model-resnet_custom_v3.pt"
            "（AUTOMATIC1111/TorchDeepDanbooru）放入 {deepbooru_dir}/，或将 BLIP / GIT 描述模型文件夹"
            "（config.json、model.safetensors、processor 与 tokenizer 文件，例如 "
            "Salesforce/blip-image-captioning-large）放入 {blip_dir}/<名称>/。"),
        "dataset.tag.choose_folder": "请先填写图片文件夹。",
        "dataset.tag.choose_image": "请先放入一张图片。",
        "dataset.tag.unreadable": "无法读取,已跳过",
    },
}


_STRINGS = Strings(STRINGS)
tr = _STRINGS.tr  # a label the browser translates (KeyError for a key without an entry)


def translate(key: str, request: Any = None) -> str:
    """Run-time text in the language of the browser that sent ``request``."""
    return _STRINGS.say(key, request)


# ------------------------------------------------------------------- pure helpers --
def model_choices(engine: Engine) -> list[tuple[str, str]]:
    from core.dataset.taggers import list_models

    return [(m.label, m.name) for m in list_models(engine.settings.paths)]


def missing_html(engine: Engine, request: Any = None) -> str:
    if model_choices(engine):
        return ""
    paths = engine.settings.paths
    head = html.escape(translate("dataset.tag.no_model", request))
    body = html.escape(translate("dataset.tag.where_models_go", request).format(
        tagger_dir=paths.tagger_dir, deepbooru_dir=paths.deepbooru_dir, blip_dir=paths.blip_dir))
    return f'<div class="kiln-error kiln-warning" id="dataset-tag-missing"><b>{head}</b> {body}</div>'


def tag_options(general_threshold: float, character_threshold: float, general_mcut: bool, character_mcut: bool,
                include_ratings: bool, character_first: bool, replace_underscore: bool, escape_brackets: bool,
                sort: str, max_tags: float, additional: str, exclude: str, num_beams: float, nucleus: bool,
                top_p: float, min_length: float, max_length: float) -> TagOptions:
    """The widgets' values → TagOptions (the same dataclass the CLI and API build)."""
    caption = CaptionOptions(num_beams=int(num_beams or 1), nucleus=bool(nucleus), top_p=float(top_p),
                             min_length=int(min_length or 0), max_length=int(max_length or 75))
    return TagOptions(general_threshold=float(general_threshold), character_threshold=float(character_threshold),
                      general_mcut=bool(general_mcut), character_mcut=bool(character_mcut),
                      include_ratings=bool(include_ratings), character_first=bool(character_first),
                      replace_underscore=bool(replace_underscore), escape_brackets=bool(escape_brackets),
                      sort=sort if sort in SORTS else "confidence", max_tags=int(max_tags or 0),
                      additional=parse_tag_list(additional), exclude=parse_tag_list(exclude), caption=caption)


def report_text(report: Any, request: Any = None) -> str:
    lines = [report.summary()]
    for skipped in report.broken:
        lines.append(f"{skipped.path.name}: {translate('dataset.tag.unreadable', request)} — {skipped.reason}")
    return "\n".join(lines)


# -------------------------------------------------------------------------- build --
def build(engine: Engine, queue: JobQueue) -> None:
    from ui.common import error_html

    choices = model_choices(engine)
    with gr.Row(equal_height=True):
        model = gr.Dropdown(label=tr("dataset.tag.model"), choices=choices, value=choices[0][1] if choices else None,
                            elem_id="dataset-tag-model", scale=6)
        refresh = gr.Button(tr("dataset.tag.refresh"), elem_id="dataset-tag-refresh", scale=0, min_width=48)
    missing = localize_on_load(gr.HTML(missing_html(engine), elem_id="dataset-tag-missing-box"),
                               lambda request: missing_html(engine, request))
    with gr.Accordion(tr("dataset.tag.options"), open=True, elem_id="dataset-tag-options"):
        with gr.Row():
            general_threshold = gr.Slider(0, 1, value=0.35, step=0.01, label=tr("dataset.tag.general_threshold"),
                                          elem_id="dataset-tag-threshold")
            character_threshold = gr.Slider(0, 1, value=0.85, step=0.01, label=tr("dataset.tag.character_threshold"),
                                            elem_id="dataset-tag-character-threshold")
        with gr.Row():
            general_mcut = gr.Checkbox(False, label=tr("dataset.tag.general_mcut"))
            character_mcut = gr.Checkbox(False, label=tr("dataset.tag.character_mcut"))
            include_ratings = gr.Checkbox(False, label=tr("dataset.tag.include_ratings"))
            character_first = gr.Checkbox(False, label=tr("dataset.tag.character_first"))
            replace_underscore = gr.Checkbox(True, label=tr("dataset.tag.replace_underscore"))
            escape_brackets = gr.Checkbox(False, label=tr("dataset.tag.escape_brackets"))
        with gr.Row():
            sort = gr.Radio([(tr(f"dataset.tag.sort.{s}"), s) for s in SORTS], value="confidence",
                            label=tr("dataset.tag.sort"))
            max_tags = gr.Number(0, precision=0, minimum=0, label=tr("dataset.tag.max_tags"))
        with gr.Row():
            additional = gr.Textbox(label=tr("dataset.tag.additional"), elem_id="dataset-tag-additional")
            exclude = gr.Textbox(label=tr("dataset.tag.exclude"), elem_id="dataset-tag-exclude")
        with gr.Accordion(tr("dataset.tag.caption_options"), open=False):
            with gr.Row():
                num_beams = gr.Slider(1, 8, value=1, step=1, label=tr("dataset.tag.num_beams"))
                nucleus = gr.Checkbox(False, label=tr("dataset.tag.nucleus"))
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label=tr("dataset.tag.top_p"))
                min_length = gr.Slider(0, 75, value=5, step=1, label=tr("dataset.tag.min_length"))
                max_length = gr.Slider(5, 150, value=75, step=1, label=tr("dataset.tag.max_length"))
    option_inputs = [general_threshold, character_threshold, general_mcut, character_mcut, include_ratings,
                     character_first, replace_underscore, escape_brackets, sort, max_tags, additional, exclude,
                     num_beams, nucleus, top_p, min_length, max_length]
    error = gr.HTML("", elem_id="dataset-tag-error")

    with gr.Tabs():
        with gr.Tab(tr("dataset.tag.single"), elem_id="dataset-tag-single"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="pil", label=tr("dataset.tag.image"), elem_id="dataset-tag-image",
                                     image_mode="RGBA", height=320)
                    interrogate = gr.Button(tr("dataset.tag.interrogate"), variant="primary",
                                            elem_id="dataset-tag-interrogate")
                with gr.Column():
                    caption = gr.Textbox(label=tr("dataset.tag.caption"), lines=3, elem_id="dataset-tag-caption",
                                         buttons=["copy"])
                    tags = gr.Label(label=tr("dataset.tag.tags"), num_top_classes=40, elem_id="dataset-tag-tags",
                                    show_heading=False)
                    ratings = gr.Label(label=tr("dataset.tag.ratings"), elem_id="dataset-tag-ratings", show_heading=False)
        with gr.Tab(tr("dataset.tag.batch"), elem_id="dataset-tag-batch"):
            folder = gr.Textbox(label=tr("dataset.tag.folder"), elem_id="dataset-tag-folder")
            with gr.Row():
                mode = gr.Radio([(tr(f"dataset.tag.mode.{m}"), m) for m in MODES], value="overwrite",
                                label=tr("dataset.tag.mode"), elem_id="dataset-tag-mode")
                extension = gr.Textbox(".txt", label=tr("dataset.tag.extension"), max_lines=1)
                batch_size = gr.Slider(1, 64, value=4, step=1, label=tr("dataset.tag.batch_size"))
                recursive = gr.Checkbox(False, label=tr("dataset.tag.recursive"))
            with gr.Row():
                start = gr.Button(tr("dataset.tag.start"), variant="primary", elem_id="dataset-tag-start")
                stop = gr.Button(tr("dataset.tag.stop"), elem_id="dataset-tag-stop")
            progress = gr.HTML("", elem_id="dataset-tag-progress")
            log = gr.Textbox(label=tr("dataset.tag.log"), lines=6, elem_id="dataset-tag-log", interactive=False)
    job_state = gr.State(None)

    def do_refresh(request: gr.Request):
        new = model_choices(engine)
        return gr.update(choices=new, value=new[0][1] if new else None), missing_html(engine, request)

    refresh.click(do_refresh, outputs=[model, missing], queue=False, show_progress="hidden")

    def do_interrogate(name: str | None, picture: Any, *values: Any, request: gr.Request = None):
        from core.dataset.taggers.service import tag_images
        from ui.common import ui_owner

        if picture is None:
            return gr.update(), gr.update(), gr.update(), error_html(translate("dataset.tag.choose_image", request),
                                                                     request)
        try:
            (result,) = tag_images(engine, queue, name or "", [picture], tag_options(*values),
                                   owner=ui_owner(request))
        except KilnError as exc:
            return gr.update(), gr.update(), gr.update(), error_html(exc.message, request)
        # The Label shows what the model found; the additional tags (certain by definition) are in the caption.
        lead = set(tag_options(*values).additional)
        scores = {t: s for t, s in result.scores().items() if t not in lead} if result.caption is None else None
        return result.text, scores, result.ratings or None, ""

    interrogate.click(do_interrogate, inputs=[model, image, *option_inputs], outputs=[caption, tags, ratings, error],
                      show_progress="minimal", concurrency_limit=None)

    def do_batch(name: str | None, path: str, mode_value: str, ext: str, size: float, rec: bool, *values: Any,
                 request: gr.Request = None) -> Iterator[Any]:
        from core.dataset.taggers.service import submit_tag_folder
        from ui.common import job_error_message, progress_html, ui_owner, watch_job

        if not (path or "").strip():
            yield gr.update(), "", error_html(translate("dataset.tag.choose_folder", request), request), None
            return
        options = TagFolderOptions(mode=mode_value, extension=(ext or ".txt").strip(), batch_size=int(size or 1),
                                   recursive=bool(rec), tags=tag_options(*values))
        job = submit_tag_folder(engine, queue, name or "", path.strip(), options, owner=ui_owner(request))
        for status in watch_job(queue, job):
            text = status.snapshot.textinfo if status.snapshot is not None else ""
            yield text, progress_html(status, request), "", job.id
        message = job_error_message(job)
        if message:
            yield gr.update(), progress_html(None), error_html(message, request), None
        elif job.result is not None:
            yield report_text(job.result, request), progress_html(None), "", None

    start.click(do_batch, inputs=[model, folder, mode, extension, batch_size, recursive, *option_inputs],
                outputs=[log, progress, error, job_state], show_progress="hidden", concurrency_limit=None)

    def do_stop(job_id: str | None, request: gr.Request = None) -> None:
        from ui.common import ui_owner

        if job_id:
            queue.stop(job_id, owner=ui_owner(request))

    stop.click(do_stop, inputs=[job_state], queue=False, show_progress="hidden")
