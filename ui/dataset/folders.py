"""Dataset › Folders & checks: kohya's ``10_sls 1girl`` folders read back with kohya's step
arithmetic, repeats suggested for a target step count, a picture folder copied into a concept
folder, the checks before training (core/dataset/checks.py) as a table, and the demo dataset
(core/dataset/demo.py) to try every step on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from core.dataset.check_cli import parse_resolution
from core.dataset.checks import CheckOptions, check_layout
from core.dataset.demo import CONCEPT, make_demo
from core.dataset.kohya_folders import lay_out_concept, plan_layout, plan_steps, scan_dataset, suggest_repeats
from core.errors import KilnError
from ui.dataset.strings import Strings
from ui.i18n import localize_headers

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

ZH = {
    "Folders & checks": "文件夹与检查",
    "Training folder (train_data_dir)": "训练集目录 (train_data_dir)",
    "Regularization folder (reg_data_dir)": "正则化目录 (reg_data_dir)",
    "The folder that holds the 10_name class folders": "存放 10_名称 类别 文件夹的目录",
    "Optional": "可选",
    "Resolution": "分辨率 (resolution)",
    "Batch size": "单批数量",
    "Epochs": "轮数 (epoch)",
    "Gradient accumulation steps": "梯度累积步数",
    "Caption extension": "标注文件扩展名 (caption_extension)",
    "Scan folders": "扫描文件夹",
    "Check dataset": "检查数据集",
    "Target steps": "目标步数",
    "Suggest repeats": "建议重复次数",
    "Folder": "文件夹",
    "Kind": "类型",
    "Repeats": "重复次数",
    "Images": "图片数",
    "Images × repeats": "图片数 × 重复次数",
    "Severity": "级别",
    "Problem": "问题",
    "File": "文件",
    "train": "训练",
    "reg": "正则化",
    "error": "错误",
    "warning": "警告",
    "Create a kohya folder": "创建 kohya 文件夹",
    "Pictures folder": "图片目录",
    "Name (identifier)": "名称 (标识符)",
    "Class": "类别",
    "Copy into the training folder": "复制到训练集目录",
    "No problems found.": "未发现问题。",
    "{errors} errors (training stops on them unless you override), {warnings} warnings.":
        "{errors} 个错误（除非手动忽略，否则训练会因此停止），{warnings} 个警告。",
    "{folder}: {repeats} repeats → {steps} steps": "{folder}：{repeats} 次重复 → {steps} 步",
    "{folder}: {copied} files copied, {already} already there. The originals stay where they were.":
        "{folder}：复制了 {copied} 个文件，{already} 个已存在。原文件保持不变。",
    "Skipped by kohya: {folder} ({reason})": "kohya 会跳过：{folder}（{reason}）",
    "Checking {n} pictures": "正在检查 {n} 张图片",
    "Make demo dataset": "生成示例数据集",
    "Demo dataset folder": "示例数据集目录",
    "A new or empty folder; existing files are never replaced": "新的或空的目录；不会覆盖已有文件",
    "Name a folder for the demo dataset.": "请填写示例数据集的目录。",
    "{n} pictures of the new concept “{concept}” in {folder}, untagged. Planted for the checks: a duplicate, "
    "a picture smaller than 64×64, and a.jpg + a.png sharing one caption. Next: tag them, copy them into the "
    "training folder (the pictures folder above is filled in), check.":
        "已在 {folder} 生成 {n} 张新概念“{concept}”的图片（未打标）。为检查预置了：一张重复图片、一张小于 64×64 "
        "的图片、共用一个标注文件的 a.jpg 与 a.png。下一步：打标，复制到训练集目录（上方的图片目录已填好），检查。",
}
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
TITLE = "Folders & checks"
S = Strings(STRINGS)
CONCEPT_KEYS = ("Folder", "Kind", "Repeats", "Images", "Images × repeats")
PROBLEM_KEYS = ("Severity", "Problem", "File")


def _headers(request: Any, keys: tuple[str, ...]) -> list[str]:
    return [S.say(key, request) for key in keys]


def scan_view(train: str, reg: str, batch: float, epochs: float, accumulation: float, request: Any
              ) -> tuple[list[list[Any]], str]:
    """The concept table and the step arithmetic for the folders given."""
    layout = scan_dataset(train.strip(), reg.strip() or None)
    rows = [[c.path.name, S.say("reg" if c.is_reg else "train", request), c.repeats, len(c.images), c.weighted_count]
            for c in (*layout.concepts, *layout.reg_concepts)]
    lines = []
    if layout.concepts:
        plan = plan_layout(layout, batch_size=int(batch), epochs=int(epochs), gradient_accumulation=int(accumulation))
        one = layout.concepts[0] if len(layout.concepts) == 1 else None
        lines.append(f"**{plan.explain(len(one.images), one.repeats) if one else plan.explain()}**")
    lines += [S.say("Skipped by kohya: {folder} ({reason})", request, folder=i.path.name, reason=i.reason)
              for i in layout.ignored]
    return rows, "  \n".join(lines)


def suggestion_text(train: str, reg: str, target: float, batch: float, epochs: float, request: Any) -> str:
    layout = scan_dataset(train.strip(), reg.strip() or None)
    lines = []
    for concept in layout.concepts:
        if not concept.images:
            continue
        repeats = suggest_repeats(len(concept.images), int(target), batch_size=int(batch), epochs=int(epochs),
                                  with_reg=bool(layout.reg_concepts))
        steps = plan_steps(len(concept.images) * repeats, batch_size=int(batch), epochs=int(epochs),
                           with_reg=bool(layout.reg_concepts)).total_steps
        lines.append(S.say("{folder}: {repeats} repeats → {steps} steps", request, folder=concept.path.name,
                           repeats=repeats, steps=steps))
    return "  \n".join(lines)


def check_view(train: str, reg: str, resolution: str, extension: str, request: Any, progress=None
               ) -> tuple[list[list[Any]], str]:
    layout = scan_dataset(train.strip(), reg.strip() or None)
    options = CheckOptions(resolution=parse_resolution(resolution or "512"),
                           caption_extension=(extension or ".txt").strip())

    def report(done: int, total: int, _path) -> None:
        if progress is not None:
            progress(done / max(total, 1), desc=S.say("Checking {n} pictures", request, n=total))
    problems = check_layout(layout, options, progress=report)
    rows = [[S.say(p.severity, request), p.message, str(p.paths[0]) if p.paths else ""] for p in problems]
    errors = sum(p.severity == "error" for p in problems)
    summary = (S.say("{errors} errors (training stops on them unless you override), {warnings} warnings.", request,
                     errors=errors, warnings=len(problems) - errors) if problems else S.say("No problems found.", request))
    return rows, summary


def demo_view(folder: str, request: Any) -> tuple[str, str]:
    """Write the demo dataset into ``folder``: the message, and the folder for "Pictures folder"."""
    if not folder.strip():
        raise KilnError(S.say("Name a folder for the demo dataset.", request))
    made = make_demo(folder.strip())
    return (S.say("{n} pictures of the new concept “{concept}” in {folder}, untagged. Planted for the checks: a "
                  "duplicate, a picture smaller than 64×64, and a.jpg + a.png sharing one caption. Next: tag them, "
                  "copy them into the training folder (the pictures folder above is filled in), check.", request,
                  n=len(made.pictures), concept=CONCEPT, folder=made.folder), str(made.folder))


def build(engine: Engine, queue: JobQueue) -> None:  # noqa: ARG001 (file work, not queue jobs)
    tr = S.tr
    with gr.Row():
        train = gr.Textbox(label=tr("Training folder (train_data_dir)"),
                           placeholder=tr("The folder that holds the 10_name class folders"),
                           elem_id="folders-train", scale=3)
        reg = gr.Textbox(label=tr("Regularization folder (reg_data_dir)"), placeholder=tr("Optional"),
                         elem_id="folders-reg", scale=3)
    with gr.Row():
        resolution = gr.Textbox("512", label=tr("Resolution"), max_lines=1, elem_id="folders-resolution")
        batch = gr.Number(1, precision=0, minimum=1, label=tr("Batch size"), elem_id="folders-batch")
        epochs = gr.Number(1, precision=0, minimum=1, label=tr("Epochs"), elem_id="folders-epochs")
        accumulation = gr.Number(1, precision=0, minimum=1, label=tr("Gradient accumulation steps"))
        extension = gr.Textbox(".txt", label=tr("Caption extension"), max_lines=1)
    with gr.Row():
        scan = gr.Button(tr("Scan folders"), elem_id="folders-scan")
        check = gr.Button(tr("Check dataset"), variant="primary", elem_id="folders-check")
        target = gr.Number(1500, precision=0, minimum=1, label=tr("Target steps"), elem_id="folders-target")
        suggest = gr.Button(tr("Suggest repeats"), elem_id="folders-suggest")
    plan = gr.Markdown(elem_id="folders-plan")
    concepts = localize_headers(gr.Dataframe(headers=list(CONCEPT_KEYS), value=[], interactive=False,
                                             elem_id="folders-concepts"), CONCEPT_KEYS, S.say)
    summary = gr.Markdown(elem_id="folders-summary")
    problems = localize_headers(gr.Dataframe(headers=list(PROBLEM_KEYS), value=[], interactive=False, wrap=True,
                                             elem_id="folders-problems"), PROBLEM_KEYS, S.say)
    with gr.Accordion(tr("Create a kohya folder"), open=False) as create_box:
        with gr.Row():
            source = gr.Textbox(label=tr("Pictures folder"), elem_id="folders-source", scale=3)
            name = gr.Textbox(label=tr("Name (identifier)"), placeholder="sls", elem_id="folders-name")
            class_word = gr.Textbox(label=tr("Class"), placeholder="1girl", elem_id="folders-class")
            repeats = gr.Number(10, precision=0, minimum=1, label=tr("Repeats"), elem_id="folders-repeats")
        create = gr.Button(tr("Copy into the training folder"), elem_id="folders-create")
        created = gr.Markdown(elem_id="folders-created")
    with gr.Row():
        demo_folder = gr.Textbox(label=tr("Demo dataset folder"),
                                 placeholder=tr("A new or empty folder; existing files are never replaced"),
                                 elem_id="folders-demo-folder", scale=3)
        demo = gr.Button(tr("Make demo dataset"), elem_id="folders-demo")
    demo_result = gr.Markdown(elem_id="folders-demo-result")

    concept_keys, problem_keys = CONCEPT_KEYS, PROBLEM_KEYS

    def on_scan(train_dir, reg_dir, b, e, acc, request: gr.Request):
        try:
            rows, text = scan_view(train_dir, reg_dir, b, e, acc, request)
        except KilnError as exc:
            rows, text = [], f"❌ {exc.message}"
        return gr.Dataframe(value=rows, headers=_headers(request, concept_keys)), text

    def on_check(train_dir, reg_dir, res, ext, b, e, acc, request: gr.Request, progress=gr.Progress()):
        try:
            table, text = scan_view(train_dir, reg_dir, b, e, acc, request)
            rows, result = check_view(train_dir, reg_dir, res, ext, request, progress)
        except KilnError as exc:
            return gr.Dataframe(), f"❌ {exc.message}", gr.Dataframe(value=[]), ""
        return (gr.Dataframe(value=table, headers=_headers(request, concept_keys)), text,
                gr.Dataframe(value=rows, headers=_headers(request, problem_keys)), result)

    def on_suggest(train_dir, reg_dir, steps, b, e, request: gr.Request):
        try:
            return suggestion_text(train_dir, reg_dir, steps, b, e, request)
        except KilnError as exc:
            return f"❌ {exc.message}"

    def on_create(src, train_dir, who, cls, n, request: gr.Request):
        try:
            result = lay_out_concept(src.strip(), train_dir.strip(), repeats=int(n or 0), instance=who or "",
                                     class_word=cls or "")
        except KilnError as exc:
            return f"❌ {exc.message}"
        return S.say("{folder}: {copied} files copied, {already} already there. The originals stay where they were.",
                     request, folder=result.folder, copied=result.copied, already=result.already_there)

    def on_demo(folder, current_source, request: gr.Request):
        try:
            text, made = demo_view(folder, request)
        except KilnError as exc:
            return f"❌ {exc.message}", current_source, gr.Accordion()
        # The next step is copying the pictures into a kohya folder: show it, source filled in.
        return text, made, gr.Accordion(open=True)

    scan.click(on_scan, [train, reg, batch, epochs, accumulation], [concepts, plan])
    check.click(on_check, [train, reg, resolution, extension, batch, epochs, accumulation],
                [concepts, plan, problems, summary])
    suggest.click(on_suggest, [train, reg, target, batch, epochs], plan)
    create.click(on_create, [source, train, name, class_word, repeats], created)
    demo.click(on_demo, [demo_folder, source], [demo_result, source, create_box])
