"""The WebUI's Train sub-tabs: Create embedding, Create hypernetwork, Train (textual inversion and
hypernetwork), beside Kiln's LoRA trainer in the Train tab.

Thin wiring: the fields carry the WebUI's argument names into core/training/ti_args.py (the
same table as the API), creating an embedding and training run as queue jobs
(core/training/ti_jobs.py), and the progress box shows step, ETA, loss and the latest preview
while a run goes; 中止 (Interrupt) ends it with the progress saved into the file.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import KilnError
from ui.dataset.strings import Strings

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

ZH = {
    "LoRA (kohya)": "LoRA (kohya)",
    "Create embedding": "创建嵌入式模型",
    "Create hypernetwork": "创建超网络模型",
    "Train": "训练",
    "Name": "名称",
    "Initialization text": "初始化文本",
    "Number of vectors per token": "每个词元的向量数",
    "Keep it at 12 or less: each vector takes one of the prompt's 75 tokens.":
        "最多不要超过12：每个向量占用提示词 75 个词元中的一个。",
    "Overwrite Old Embedding": "覆盖同名嵌入式模型",
    "Modules": "模块",
    "Enter hypernetwork layer structure": "输入超网络层结构",
    "Select activation function of hypernetwork. Recommended : Swish / Linear(none)":
        "选择超网络的激活函数。推荐：Swish / Linear(无)",
    "Select Layer weights initialization. Recommended: Kaiming for relu-like, Xavier for sigmoid-like, Normal otherwise":
        "选择层权重初始化方法。推荐：类 relu 用 Kaiming，类 sigmoid 用 Xavier，其他用 Normal",
    "Add layer normalization": "添加层标准化",
    "Use dropout": "采用随机失活 (dropout)",
    "Enter hypernetwork Dropout structure (or empty). Recommended : 0~0.35 incrementing sequence: 0, 0.05, 0.15":
        "输入超网络随机失活结构（或留空）。推荐：0~0.35 的递增序列：0, 0.05, 0.15",
    "Overwrite Old Hypernetwork": "覆盖同名超网络模型",
    "Train an embedding or Hypernetwork; you must specify a directory with a set of 1:1 ratio images":
        "训练嵌入式模型或超网络模型；必须指定一个包含一组 1:1 比例图像的目录",
    "Embedding": "嵌入式模型",
    "Hypernetwork": "超网络 (Hypernetwork)",
    "Embedding Learning rate": "嵌入式模型学习率",
    "Hypernetwork Learning rate": "超网络模型学习率",
    "Gradient Clipping": "梯度裁剪",
    "Gradient accumulation steps": "梯度累积步数",
    "Dataset directory": "数据集目录",
    "Path to directory with input images": "输入图像所在目录的路径",
    "Log directory": "日志目录",
    "Path to directory where to write outputs": "写入输出的目录路径",
    "Prompt template": "提示词模板",
    "Width": "宽度",
    "Height": "高度",
    "Do not resize images": "不调整图像大小",
    "Max steps": "最大步数",
    "Save an image to log directory every N steps, 0 to disable": "每 N 步保存一张图像到日志目录，0 表示禁用",
    "Save a copy of embedding to log directory every N steps, 0 to disable":
        "每 N 步保存一个嵌入式模型副本到日志目录，0 表示禁用",
    "Save images with embedding in PNG chunks": "将嵌入式模型保存到 PNG 图片块中",
    "Read parameters (prompt, etc...) from txt2img tab when making previews":
        "生成预览时从文生图选项卡读取参数（提示词等）",
    "Shuffle tags by ',' when creating prompts.": "创建提示词时按“,”打乱标签",
    "Drop out tags when creating prompts.": "创建提示词时随机丢弃标签",
    "Choose latent sampling method": "选择潜空间采样方法",
    # the WebUI's choices (the values sent stay these English words)
    "once": "一次 (once)",
    "deterministic": "确定性 (deterministic)",
    "random": "随机 (random)",
    "disabled": "禁用 (disabled)",
    "value": "按值 (value)",
    "norm": "按范数 (norm)",
    "Gradient clipping threshold": "梯度裁剪阈值",
    "Train Embedding": "训练嵌入式模型",
    "Train Hypernetwork": "训练超网络模型",
    "Interrupt": "中止",
    "Preview": "预览",
    "Loss": "损失 (loss)",
    "Refresh": "刷新",
    "Created {path}.": "已创建 {path}。",
    "Training finished at step {step}: {path}": "训练完成，步数 {step}：{path}",
    "Training interrupted at step {step}; the progress is saved in {path}":
        "训练已中止，步数 {step}；进度已保存到 {path}",
}
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
S = Strings(STRINGS)

# The txt2img fields a preview reads with "Read parameters from txt2img" (their elem_ids).
TXT2IMG_PREVIEW = {"preview_prompt": "txt2img-prompt", "preview_negative_prompt": "txt2img-negative-prompt",
                   "preview_steps": "txt2img-steps", "preview_sampler_name": "txt2img-sampler",
                   "preview_cfg_scale": "txt2img-cfg", "preview_seed": "txt2img-seed",
                   "preview_width": "txt2img-width", "preview_height": "txt2img-height"}


def embedding_names(engine: Engine) -> list[str]:
    """The embeddings that can be trained: the ``.pt`` files of the embeddings folder."""
    from core.models.folders import walk_files

    return sorted({p.stem for p in walk_files(engine.paths.embeddings_dir, (".pt",))}, key=str.lower)


def hypernetwork_names(engine: Engine) -> list[str]:
    from core.networks.hypernetworks import find_hypernetworks

    return list(find_hypernetworks(engine.paths.hypernetwork_dir))


def template_names(engine: Engine) -> list[str]:
    from core.training.ti_data import list_templates

    return list(list_templates(engine.paths.data_dir))


def _txt2img_fields() -> dict[str, Any]:
    """The txt2img components of the page being built (the tab is built before Train)."""
    from gradio.context import get_blocks_context

    context = get_blocks_context()
    if context is None:
        return {}
    by_id = {getattr(b, "elem_id", None): b for b in context.blocks.values()}
    return {name: by_id[elem_id] for name, elem_id in TXT2IMG_PREVIEW.items() if elem_id in by_id}


@contextmanager
def train_subtabs(engine: Engine, queue: JobQueue) -> Iterator[None]:
    """The Train tab's sub-tabs: the ``with`` body (the LoRA form) is the first, then DreamBooth
    (ui/train_db.py), then the WebUI's three."""
    tr = S.tr
    with gr.Tabs(elem_id="train-tabs"):
        with gr.Tab(tr("LoRA (kohya)"), id="train-lora", elem_id="train-tab-lora"):
            yield
        from ui.train_db import S as DB_STRINGS
        from ui.train_db import build_dreambooth_form

        with gr.Tab(DB_STRINGS.tr("DreamBooth / fine-tune"), id="train-dreambooth", elem_id="train-tab-dreambooth"):
            build_dreambooth_form(engine, queue)
        with gr.Tab(tr("Create embedding"), id="train-create-embedding", elem_id="train-tab-create-embedding"):
            embedding_created = _create_embedding(engine, queue)
        with gr.Tab(tr("Create hypernetwork"), id="train-create-hypernetwork",
                    elem_id="train-tab-create-hypernetwork"):
            hypernetwork_created = _create_hypernetwork(engine)
        with gr.Tab(tr("Train"), id="train-ti", elem_id="train-tab-ti"):
            embedding_list, hypernetwork_list = _train(engine, queue)
    # As in the WebUI, a new file is in the Train sub-tab's list at once.
    embedding_created.then(lambda: gr.update(choices=embedding_names(engine)), None, embedding_list)
    hypernetwork_created.then(lambda: gr.update(choices=hypernetwork_names(engine)), None, hypernetwork_list)


def _message(text: str) -> str:
    return f'<div class="kiln-info">{html.escape(text)}</div>'


def _create_embedding(engine: Engine, queue: JobQueue) -> Any:
    tr = S.tr
    with gr.Row():
        with gr.Column():
            name = gr.Textbox(label=tr("Name"), elem_id="ti-name")
            init_text = gr.Textbox("*", label=tr("Initialization text"), elem_id="ti-init-text")
            vectors = gr.Slider(1, 75, value=1, step=1, label=tr("Number of vectors per token"),
                                info=tr("Keep it at 12 or less: each vector takes one of the prompt's 75 tokens."),
                                elem_id="ti-vectors")
            overwrite = gr.Checkbox(False, label=tr("Overwrite Old Embedding"), elem_id="ti-overwrite")
            create = gr.Button(tr("Create embedding"), variant="primary", elem_id="ti-create")
        with gr.Column():
            message = gr.HTML(elem_id="ti-create-message")

    def on_create(name_value, init_value, vectors_value, overwrite_value, request: gr.Request):
        from core.training.ti_jobs import create_embedding_job
        from ui.common import error_html, job_error_message, ui_owner

        job = queue.submit(create_embedding_job(engine, name_value, int(vectors_value), bool(overwrite_value),
                                                init_value or ""), f"create embedding {name_value}", ui_owner(request))
        job.done_event.wait()
        error = job_error_message(job)
        return error_html(error, request) if error else _message(S.say("Created {path}.", request, path=job.result))

    return create.click(on_create, [name, init_text, vectors, overwrite], message)


def _create_hypernetwork(engine: Engine) -> Any:
    from core.training.hypernetwork import ACTIVATIONS, SIZES, WEIGHT_INITS

    tr = S.tr
    with gr.Row():
        with gr.Column():
            name = gr.Textbox(label=tr("Name"), elem_id="hn-name")
            sizes = gr.CheckboxGroup([str(s) for s in SIZES], value=["768", "320", "640", "1280"],
                                     label=tr("Modules"), elem_id="hn-sizes")
            layers = gr.Textbox("1, 2, 1", label=tr("Enter hypernetwork layer structure"), elem_id="hn-layers")
            activation = gr.Dropdown(list(ACTIVATIONS), value="linear", elem_id="hn-activation",
                                     label=tr("Select activation function of hypernetwork. Recommended : Swish / "
                                              "Linear(none)"))
            init = gr.Dropdown(list(WEIGHT_INITS), value="Normal", elem_id="hn-init",
                               label=tr("Select Layer weights initialization. Recommended: Kaiming for relu-like, "
                                        "Xavier for sigmoid-like, Normal otherwise"))
            layer_norm = gr.Checkbox(False, label=tr("Add layer normalization"), elem_id="hn-layer-norm")
            dropout = gr.Checkbox(False, label=tr("Use dropout"), elem_id="hn-dropout")
            dropout_structure = gr.Textbox("0, 0, 0", elem_id="hn-dropout-structure",
                                           label=tr("Enter hypernetwork Dropout structure (or empty). Recommended : "
                                                    "0~0.35 incrementing sequence: 0, 0.05, 0.15"))
            overwrite = gr.Checkbox(False, label=tr("Overwrite Old Hypernetwork"), elem_id="hn-overwrite")
            create = gr.Button(tr("Create hypernetwork"), variant="primary", elem_id="hn-create")
        with gr.Column():
            message = gr.HTML(elem_id="hn-create-message")

    fields = [name, sizes, layers, activation, init, layer_norm, dropout, dropout_structure, overwrite]

    def on_create(data: dict, request: gr.Request):
        from core.training.ti_args import hypernetwork_spec
        from core.training.ti_jobs import create_hypernetwork_file
        from ui.common import error_html

        keys = ("name", "enable_sizes", "layer_structure", "activation_func", "weight_init", "add_layer_norm",
                "use_dropout", "dropout_structure", "overwrite_old")
        try:
            path = create_hypernetwork_file(engine, hypernetwork_spec(dict(zip(keys, (data[f] for f in fields)))))
        except KilnError as exc:
            return error_html(exc.message, request)
        return _message(S.say("Created {path}.", request, path=path))

    # Gradio hands a set of inputs over as one {component: value} dict (it cannot fill *args).
    return create.click(on_create, {*fields}, message)


def _train(engine: Engine, queue: JobQueue) -> tuple[Any, Any]:
    from ui.i18n import t

    tr = S.tr
    gr.Markdown(tr("Train an embedding or Hypernetwork; you must specify a directory with a set of 1:1 ratio images"))
    w: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                w["embedding_name"] = gr.Dropdown(embedding_names(engine), label=tr("Embedding"),
                                                  elem_id="ti-train-embedding", scale=3)
                refresh_embeddings = gr.Button("🔄", elem_id="ti-refresh-embeddings", scale=0, min_width=40)
                w["hypernetwork_name"] = gr.Dropdown(hypernetwork_names(engine), label=tr("Hypernetwork"),
                                                     elem_id="ti-train-hypernetwork", scale=3)
                refresh_hypernetworks = gr.Button("🔄", elem_id="ti-refresh-hypernetworks", scale=0, min_width=40)
            with gr.Row():
                w["embedding_learn_rate"] = gr.Textbox("0.005", label=tr("Embedding Learning rate"),
                                                       elem_id="ti-embedding-lr")
                w["hypernetwork_learn_rate"] = gr.Textbox("0.00001", label=tr("Hypernetwork Learning rate"),
                                                          elem_id="ti-hypernetwork-lr")
            with gr.Row():
                w["clip_grad_mode"] = gr.Dropdown([(tr(m), m) for m in ("disabled", "value", "norm")], value="disabled",
                                                  label=tr("Gradient Clipping"), elem_id="ti-clip-grad-mode")
                w["clip_grad_value"] = gr.Textbox("0.1", label=tr("Gradient clipping threshold"), show_label=False,
                                                  elem_id="ti-clip-grad-value")
            with gr.Row():
                w["batch_size"] = gr.Number(1, precision=0, minimum=1, label=t("Batch size"), elem_id="ti-batch")
                w["gradient_step"] = gr.Number(1, precision=0, minimum=1, label=tr("Gradient accumulation steps"),
                                               elem_id="ti-gradient-step")
            w["data_root"] = gr.Textbox(label=tr("Dataset directory"), placeholder=tr("Path to directory with input images"),
                                        elem_id="ti-data-root")
            w["log_directory"] = gr.Textbox("textual_inversion", label=tr("Log directory"),
                                            placeholder=tr("Path to directory where to write outputs"),
                                            elem_id="ti-log-directory")
            with gr.Row():
                templates = template_names(engine)
                w["template_filename"] = gr.Dropdown(templates, value="style_filewords.txt" if "style_filewords.txt"
                                                     in templates else None, label=tr("Prompt template"),
                                                     elem_id="ti-template", scale=3)
                refresh_templates = gr.Button("🔄", elem_id="ti-refresh-templates", scale=0, min_width=40)
            w["training_width"] = gr.Slider(64, 2048, value=512, step=8, label=tr("Width"), elem_id="ti-width")
            w["training_height"] = gr.Slider(64, 2048, value=512, step=8, label=tr("Height"), elem_id="ti-height")
            w["varsize"] = gr.Checkbox(False, label=tr("Do not resize images"), elem_id="ti-varsize")
            w["steps"] = gr.Number(100000, precision=0, minimum=1, label=tr("Max steps"), elem_id="ti-steps")
            with gr.Row():
                w["create_image_every"] = gr.Number(500, precision=0, minimum=0, elem_id="ti-image-every",
                                                    label=tr("Save an image to log directory every N steps, 0 to disable"))
                w["save_every"] = gr.Number(500, precision=0, minimum=0, elem_id="ti-save-every",
                                            label=tr("Save a copy of embedding to log directory every N steps, "
                                                     "0 to disable"))
            w["save_image_with_stored_embedding"] = gr.Checkbox(
                True, label=tr("Save images with embedding in PNG chunks"), elem_id="ti-save-image-with-embedding")
            w["preview_from_txt2img"] = gr.Checkbox(
                False, label=tr("Read parameters (prompt, etc...) from txt2img tab when making previews"),
                elem_id="ti-preview-from-txt2img")
            w["shuffle_tags"] = gr.Checkbox(False, label=tr("Shuffle tags by ',' when creating prompts."),
                                            elem_id="ti-shuffle-tags")
            w["tag_drop_out"] = gr.Slider(0, 1, value=0, step=0.1, label=tr("Drop out tags when creating prompts."),
                                          elem_id="ti-tag-drop-out")
            w["latent_sampling_method"] = gr.Radio([(tr(m), m) for m in ("once", "deterministic", "random")], value="once",
                                                   label=tr("Choose latent sampling method"),
                                                   elem_id="ti-latent-sampling")
            with gr.Row():
                interrupt = gr.Button(tr("Interrupt"), elem_id="ti-interrupt")
                train_hypernetwork = gr.Button(tr("Train Hypernetwork"), variant="primary",
                                               elem_id="ti-train-hypernetwork-button")
                train_embedding = gr.Button(tr("Train Embedding"), variant="primary",
                                            elem_id="ti-train-embedding-button")
        with gr.Column(scale=2):
            progress = gr.HTML(elem_id="ti-progress")
            message = gr.HTML(elem_id="ti-message")
            preview = gr.Image(label=tr("Preview"), type="pil", interactive=False, elem_id="ti-preview", height=320)
            plot = gr.LinePlot(x="step", y="loss", label=tr("Loss"), elem_id="ti-loss-plot", height=220)

    refresh_embeddings.click(lambda: gr.update(choices=embedding_names(engine)), None, w["embedding_name"])
    refresh_hypernetworks.click(lambda: gr.update(choices=hypernetwork_names(engine)), None, w["hypernetwork_name"])
    refresh_templates.click(lambda: gr.update(choices=template_names(engine)), None, w["template_filename"])

    previews = _txt2img_fields()
    names = list(w) + list(previews)
    inputs = [w[n] for n in w] + list(previews.values())

    def run(kind: str, values: list[Any], request: gr.Request):
        from core.training import ti_args, ti_jobs
        from ui.common import error_html, job_error_message, progress_html, ui_owner, watch_job

        v = dict(zip(names, values))
        save_every = v.pop("save_every")
        learn_rates = {"embedding": v.pop("embedding_learn_rate"), "hypernetwork": v.pop("hypernetwork_learn_rate")}
        name = v.pop("embedding_name") if kind == "embedding" else v.pop("hypernetwork_name")
        v.pop("hypernetwork_name" if kind == "embedding" else "embedding_name", None)
        stored = v.pop("save_image_with_stored_embedding")
        if kind == "embedding":
            v["save_image_with_stored_embedding"] = stored
        args = {**v, f"{kind}_name": name, "learn_rate": learn_rates[kind], f"save_{kind}_every": save_every}
        for key in ("batch_size", "gradient_step", "steps", "create_image_every", f"save_{kind}_every",
                    "training_width", "training_height"):
            args[key] = int(args[key] or 0)
        try:
            name, options = (ti_args.embedding_args if kind == "embedding" else ti_args.hypernetwork_args)(args)
        except KilnError as exc:
            yield "", error_html(exc.message, request), gr.update(), gr.update()
            return
        make = ti_jobs.train_embedding_job if kind == "embedding" else ti_jobs.train_hypernetwork_job
        job = queue.submit(make(engine, name, options), f"train {kind} {name}", ui_owner(request), kind="train")
        for status in watch_job(queue, job, interval=1.0):
            snapshot = status.snapshot
            text = html.escape(snapshot.textinfo) if snapshot is not None and snapshot.textinfo else ""
            image = snapshot.preview if snapshot is not None and snapshot.preview is not None else gr.update()
            yield progress_html(status, request), text, image, _loss_frame(job)
        error = job_error_message(job)
        if error:
            yield "", error_html(error, request), gr.update(), _loss_frame(job)
            return
        result = job.result
        key = "Training interrupted at step {step}; the progress is saved in {path}" if result.interrupted else \
            "Training finished at step {step}: {path}"
        yield "", _message(S.say(key, request, step=result.step, path=result.path)), gr.update(), _loss_frame(job)

    def on_train_embedding(data: dict, request: gr.Request):
        yield from run("embedding", [data[c] for c in inputs], request)

    def on_train_hypernetwork(data: dict, request: gr.Request):
        yield from run("hypernetwork", [data[c] for c in inputs], request)

    # Gradio hands a set of inputs over as one {component: value} dict (it cannot fill *args).
    outputs = [progress, message, preview, plot]
    train_embedding.click(on_train_embedding, {*inputs}, outputs, show_progress="hidden")
    train_hypernetwork.click(on_train_hypernetwork, {*inputs}, outputs, show_progress="hidden")

    def on_interrupt(request: gr.Request) -> None:
        from ui.common import ui_owner

        for job in queue.jobs(ui_owner(request)):
            if job.kind == "train" and not job.done and job.description.startswith(("train embedding",
                                                                                      "train hypernetwork")):
                queue.stop(job.id, owner=ui_owner(request))

    interrupt.click(on_interrupt, queue=False, show_progress="hidden")
    return w["embedding_name"], w["hypernetwork_name"]


def _loss_frame(job) -> Any:
    import pandas as pd

    rows = [{"step": row["step_done"], "loss": row["loss"]} for row in job.metrics if "loss" in row]
    if not rows:
        return gr.update()
    return pd.DataFrame(rows).astype({"step": "int64", "loss": "float64"})
