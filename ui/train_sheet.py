"""The Train tab's evaluation sheet: the run's epoch files × LoRA weights × prompts as one job,
the sheet shown when it is done (every cell at full size with its infotext on click), and
"Keep this one" to copy the chosen epoch file into models/Lora.

The folder and output name are the Train form's own (``output_dir`` / ``output_name``), so
after a run the sheet is one click, and any earlier run is the same click with those two changed.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import KilnError
from core.training.evaluation import DEFAULT_WEIGHTS
from ui.dataset.strings import Strings

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

ZH = {
    "Evaluation sheet": "评估表",
    "LoRA weights (Y)": "LoRA 权重 (Y轴)",
    "Prompts (Z), one per line; empty: the sample prompts file": "提示词 (Z轴)，每行一个；留空则使用预览提示词文件",
    "Sheet seed": "评估表随机种子",
    "Sheet steps": "评估表迭代步数",
    "Make the evaluation sheet when training ends": "训练结束后生成评估表",
    "Make evaluation sheet": "生成评估表",
    "Cells": "单元格",
    "Epoch file to keep": "要保留的轮次文件",
    "Name in models/Lora": "在 models/Lora 中的名称",
    "Keep this one": "保留此文件",
    "Sheet saved: {png} and {html}.": "评估表已保存：{png} 和 {html}。",
    "Best: {name} (checker score {score}).": "最佳：{name}（检查器得分 {score}）。",
    "Kept as {path}; it is in Extra networks › Lora after refresh.": "已保存为 {path}；刷新后可在 额外网络 › Lora 中找到。",
    "Give the sheet at least one prompt, or a sample prompts file.": "请至少填写一个提示词，或指定预览提示词文件。",
    "LoRA weights must be numbers separated by commas, e.g. 0.4, 0.6, 0.8, 1.0, 1.2": "LoRA 权重必须是以逗号分隔的数字，例如 0.4, 0.6, 0.8, 1.0, 1.2",
}
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
S = Strings(STRINGS)


@dataclass
class SheetSection:
    weights: gr.Textbox
    prompts: gr.Textbox
    seed: gr.Number
    steps: gr.Number
    auto: gr.Checkbox
    make: gr.Button
    progress: gr.HTML
    message: gr.HTML
    sheet: gr.Image
    cells: gr.Gallery
    cell_info: gr.HTML
    infotexts: gr.State
    keep_choice: gr.Dropdown
    keep_name: gr.Textbox
    keep: gr.Button

    @property
    def inputs(self) -> list[Any]:
        return [self.weights, self.prompts, self.seed, self.steps, self.auto]

    @property
    def outputs(self) -> list[Any]:
        return [self.progress, self.message, self.sheet, self.cells, self.infotexts, self.keep_choice]


def build_sheet_section() -> SheetSection:
    tr = S.tr
    with gr.Accordion(tr("Evaluation sheet"), open=False, elem_id="train-sheet"):
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    weights = gr.Textbox(", ".join(f"{w:g}" for w in DEFAULT_WEIGHTS), label=tr("LoRA weights (Y)"),
                                         elem_id="train-sheet-weights", scale=3)
                    seed = gr.Number(1, precision=0, label=tr("Sheet seed"), elem_id="train-sheet-seed", scale=1)
                    steps = gr.Number(20, precision=0, minimum=1, maximum=150, label=tr("Sheet steps"),
                                      elem_id="train-sheet-steps", scale=1)
                prompts = gr.Textbox("", lines=3, label=tr("Prompts (Z), one per line; empty: the sample prompts file"),
                                     elem_id="train-sheet-prompts")
                with gr.Row():
                    auto = gr.Checkbox(False, label=tr("Make the evaluation sheet when training ends"),
                                       elem_id="train-sheet-auto")
                    make = gr.Button(tr("Make evaluation sheet"), variant="primary", elem_id="train-sheet-make")
                progress = gr.HTML(elem_id="train-sheet-progress")
                message = gr.HTML(elem_id="train-sheet-message")
                with gr.Row():
                    keep_choice = gr.Dropdown([], label=tr("Epoch file to keep"), elem_id="train-sheet-keep-choice")
                    keep_name = gr.Textbox("", label=tr("Name in models/Lora"), elem_id="train-sheet-keep-name")
                    keep = gr.Button(tr("Keep this one"), elem_id="train-sheet-keep", scale=0, min_width=140)
            with gr.Column(scale=4):
                sheet = gr.Image(label=tr("Evaluation sheet"), type="pil", format="png", interactive=False,
                                 elem_id="train-sheet-image", height=420)
                cells = gr.Gallery(label=tr("Cells"), columns=6, height=260, elem_id="train-sheet-cells",
                                   format="png")
                cell_info = gr.HTML(elem_id="train-sheet-cell-info")
    return SheetSection(weights, prompts, seed, steps, auto, make, progress, message, sheet, cells, cell_info,
                        gr.State([]), keep_choice, keep_name, keep)


# ------------------------------------------------------------------------ reading --
def parse_weights(text: str, request: Any = None) -> tuple[float, ...]:
    try:
        weights = tuple(float(part) for part in str(text or "").replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise KilnError(S.say("LoRA weights must be numbers separated by commas, e.g. 0.4, 0.6, 0.8, 1.0, 1.2",
                              request)) from None
    return weights or DEFAULT_WEIGHTS


def sheet_prompts(text: str, sample_prompts_file: str, request: Any = None) -> list:
    """The prompts typed (kohya's ``--n`` / ``--d`` options allowed), else the run's sample prompts."""
    from core.training.samples import parse_prompt_line, read_sample_prompts

    lines = [line for line in str(text or "").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if lines:
        return [parse_prompt_line(line) for line in lines]
    if (sample_prompts_file or "").strip():
        return read_sample_prompts(sample_prompts_file.strip())
    raise KilnError(S.say("Give the sheet at least one prompt, or a sample prompts file.", request))


# ----------------------------------------------------------------------- running --
def sheet_updates(section: SheetSection, engine: Engine, queue: JobQueue, values: dict[str, Any],
                  request: Any = None) -> Iterator[dict[Any, Any]]:
    """Queue the sheet for ``values`` (output_dir, output_name, sample_prompts, base model title,
    weights, prompts, seed, steps) and yield the section's updates until it is done."""
    from core.training.evaluation import SheetRequest, sheet_job
    from ui.common import error_html, job_error_message, progress_html, ui_owner, warning_html, watch_job

    try:
        folder = Path(str(values.get("output_dir") or engine.settings.paths.lora_dir)).expanduser()
        name = str(values.get("output_name") or "").strip()
        spec = SheetRequest(folder=folder, output_name=name,
                            prompts=sheet_prompts(values.get("prompts", ""), values.get("sample_prompts", ""), request),
                            weights=parse_weights(values.get("weights", ""), request),
                            seed=int(values.get("seed") or 1), steps=int(values.get("steps") or 20),
                            checkpoint=values.get("checkpoint") or None)
        fn = sheet_job(engine, spec)
    except KilnError as exc:
        yield {section.message: error_html(exc.message, request), section.progress: ""}
        return
    job = queue.submit(fn, description=f"evaluation sheet {name}", owner=ui_owner(request), kind="generate")
    yield {section.message: "", section.progress: ""}
    for status in watch_job(queue, job):
        update: dict[Any, Any] = {section.progress: progress_html(status, request)}
        snap = status.snapshot
        if snap is not None and snap.preview is not None:
            update[section.sheet] = snap.preview
        yield update
    error = job_error_message(job)
    if error or job.result is None:
        yield {section.progress: "", section.message: error_html(error or "", request)}
        return
    result = job.result
    lines = [S.say("Sheet saved: {png} and {html}.", request, png=result.png, html=result.html)]
    if result.best is not None:
        lines.append(S.say("Best: {name} (checker score {score}).", request, name=result.best[0],
                           score=f"{result.best[1]:.2f}"))
    shown = [c for c in result.cells if c.image is not None]
    captions = [f"{c.file} · {c.weight:g}" + (f" · {c.score:.2f}" if c.score is not None else "") for c in shown]
    from PIL import Image

    with Image.open(result.png) as picture:
        sheet = picture.copy()
    files = list(dict.fromkeys(c.file for c in result.cells))
    choice = result.best[0] if result.best is not None else files[-1]
    yield {section.progress: "",
           section.message: "<br>".join(html.escape(line) for line in lines) + warning_html("\n".join(result.warnings)),
           section.sheet: sheet, section.cells: list(zip([c.image for c in shown], captions)),
           section.infotexts: [c.infotext for c in shown],
           section.keep_choice: gr.Dropdown(choices=files, value=choice)}


def wire_sheet_section(section: SheetSection, engine: Engine, queue: JobQueue, form: dict[str, Any],
                       checkpoint_of: Any) -> None:
    """``form``: the Train form's output_dir, output_name, sample_prompts and base model widgets;
    ``checkpoint_of(title)``: the checkpoint title the sheet renders with."""
    from ui.common import error_html, infotext_html

    def values_of(data: dict[Any, Any]) -> dict[str, Any]:
        return {"output_dir": data[form["output_dir"]], "output_name": data[form["output_name"]],
                "sample_prompts": data[form["sample_prompts"]],
                "checkpoint": checkpoint_of(data[form["pretrained_model_name_or_path"]]),
                "weights": data[section.weights], "prompts": data[section.prompts], "seed": data[section.seed],
                "steps": data[section.steps]}

    def on_make(data: dict[Any, Any], request: gr.Request):
        yield from sheet_updates(section, engine, queue, values_of(data), request)

    section.make.click(on_make, {*form.values(), *section.inputs}, section.outputs, show_progress="hidden")

    def on_select(infotexts: list[str], event: gr.SelectData):
        index = event.index if isinstance(event.index, int) else 0
        return infotext_html(infotexts[index] if 0 <= index < len(infotexts) else "")

    section.cells.select(on_select, section.infotexts, section.cell_info, show_progress="hidden")

    def on_keep(folder: str, choice: str | None, name: str, request: gr.Request):
        from core.training.evaluation import keep_file

        if not choice:
            return ""
        source = Path(str(folder or engine.settings.paths.lora_dir)).expanduser() / f"{choice}.safetensors"
        try:
            kept = keep_file(source, engine.settings.paths.lora_dir, name or choice)
        except KilnError as exc:
            return error_html(exc.message, request)
        engine.refresh_models()
        return html.escape(S.say("Kept as {path}; it is in Extra networks › Lora after refresh.", request, path=kept))

    section.keep.click(on_keep, [form["output_dir"], section.keep_choice, section.keep_name], section.message,
                       show_progress="hidden")
