"""The Train tab's DreamBooth / fine-tune sub-tab: train_db.py's main fields by their names, the
class-picture count, and an optional LoRA extracted at the end.

The fields become a ``DreamBoothConfig`` through the TOML loader's own checks (a bad value is
named by its key); the run is ``core.training.jobs.dreambooth_job`` on the queue, so the tab trains
what a saved TOML describes. The result is one checkpoint file in models/Stable-diffusion, so
there is no "Create model" step and no working copy in models/dreambooth (seed 002's extension).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import KilnError
from ui.dataset.strings import Strings
from ui.train_config_files import wire_config_files

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

ZH = {
    "DreamBooth / fine-tune": "DreamBooth / 微调",
    "Base model (pretrained_model_name_or_path)": "底模 (pretrained_model_name_or_path)",
    "Instance folder (train_data_dir)": "实例图像目录 (train_data_dir)",
    "Class images folder (reg_data_dir)": "正则化图像目录 (reg_data_dir)",
    "Class prompt (class_prompt; empty: the folder's class)": "类别提示词 (class_prompt；留空：使用目录的类别)",
    "Class images per folder (num_class_images; 0 = use what is there)":
        "每个目录的正则化图像数 (num_class_images；0 = 只用已有的)",
    "Prior loss weight (prior_loss_weight)": "先验损失权重 (prior_loss_weight)",
    "Model name (output_name)": "模型名称 (output_name)",
    "Learning rate (learning_rate)": "学习率 (learning_rate)",
    "Train the text encoder (train_text_encoder)": "训练文本编码器 (train_text_encoder)",
    "Text encoder learning rate (learning_rate_te)": "文本编码器学习率 (learning_rate_te)",
    "Steps (max_train_steps)": "训练步数 (max_train_steps)",
    "Epochs (max_train_epochs; 0 = by steps)": "训练轮数 (max_train_epochs；0 = 按步数)",
    "Batch size (train_batch_size)": "批量大小 (train_batch_size)",
    "Resolution (resolution)": "分辨率 (resolution)",
    "Caption extension (caption_extension)": "标注文件扩展名 (caption_extension)",
    "Optimizer (optimizer_type)": "优化器 (optimizer_type)",
    "8-bit Adam where available (use_8bit_adam)": "可用时使用 8-bit Adam (use_8bit_adam)",
    "Mixed precision (mixed_precision)": "混合精度 (mixed_precision)",
    "Gradient checkpointing (gradient_checkpointing)": "梯度检查点 (gradient_checkpointing)",
    "EMA weights (use_ema)": "EMA 权重 (use_ema)",
    "Save precision (save_precision)": "保存精度 (save_precision)",
    "Save every N epochs (save_every_n_epochs; 0 = only at the end)": "每 N 轮保存一次 (save_every_n_epochs；0 = 仅在结束时)",
    "Seed (seed)": "随机种子 (seed)",
    "Extract a LoRA after training": "训练后提取 LoRA",
    "LoRA rank (dim)": "LoRA 维度 (dim)",
    "Conv rank (conv_dim; 0 = off)": "卷积维度 (conv_dim；0 = 关闭)",
    "Clamp quantile (clamp_quantile)": "截断分位数 (clamp_quantile)",
    "Config file (TOML)": "配置文件 (TOML)",
    "Save config": "保存配置",
    "Load config": "加载配置",
    "Start training": "开始训练",
    "Stop and save": "停止并保存",
    "Count class images": "统计正则化图像",
    "**Where the output goes:** one checkpoint file, `<output_name>.safetensors`, in models/Stable-diffusion "
    "(with `-000001` ... for the epoch saves); it is in the checkpoint list when training ends. There is no "
    "\"Create model\" step and no working copy in models/dreambooth. The extracted LoRA goes to models/Lora "
    "under the same name. Fine-tuning on hundreds of pictures: learning rate about 3e-6, batch size 3 or less.":
        "**输出位置：** 一个模型文件 `<output_name>.safetensors`，保存在 models/Stable-diffusion"
        "（按轮保存的文件带 `-000001` 等后缀）；训练结束后会出现在模型列表中。无需“创建模型”步骤，"
        "models/dreambooth 中也没有工作副本。提取的 LoRA 以相同名称保存到 models/Lora。"
        "用数百张图像微调时：学习率约 3e-6，批量大小不超过 3。",
    "{existing} class images in the folders, {missing} to generate with the base model.":
        "目录中已有 {existing} 张正则化图像，需用底模生成 {missing} 张。",
    "Training finished: {n} files.": "训练完成：{n} 个文件。",
    "Config saved to {path}.": "配置已保存到 {path}。",
    "Config loaded from {path}.": "已从 {path} 加载配置。",
    "Keys Kiln does not know: {keys}": "Kiln 不认识的键：{keys}",
}
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
S = Strings(STRINGS)
NOTE = next(k for k in ZH if k.startswith("**Where the output goes"))

FIELDS = ("pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "class_prompt", "num_class_images",
          "prior_loss_weight", "output_name", "learning_rate", "train_text_encoder", "learning_rate_te",
          "max_train_steps", "max_train_epochs", "train_batch_size", "resolution", "caption_extension",
          "optimizer_type", "use_8bit_adam", "mixed_precision", "gradient_checkpointing", "use_ema", "save_precision",
          "save_every_n_epochs", "seed", "extract_lora", "extract_lora_dim", "extract_conv_dim",
          "extract_clamp_quantile")
# Zero in these number fields means "unset" (kohya's None).
ZERO_IS_UNSET = ("max_train_epochs", "save_every_n_epochs", "extract_conv_dim")


def values_to_config(values: dict[str, Any]):
    """Form values → (DreamBoothConfig, unknown keys), checked as a TOML would be."""
    from core.training.dreambooth_config import dreambooth_config_from_dict

    raw: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                continue
        if key in ZERO_IS_UNSET and not value:
            continue
        if isinstance(value, float) and value.is_integer() and key not in ("prior_loss_weight",
                                                                          "extract_clamp_quantile"):
            value = int(value)
        raw[key] = value
    return dreambooth_config_from_dict(raw)


def config_to_values(config) -> dict[str, Any]:
    out = {}
    for key in FIELDS:
        value = getattr(config, key)
        out[key] = (0 if key in ZERO_IS_UNSET else "") if value is None else value
    return out


def class_count_text(values: dict[str, Any], request: Any = None) -> str:
    from core.training.class_images import plan_class_images

    try:
        config, _ = values_to_config(values)
        folders = plan_class_images(config, create=False)
    except KilnError as exc:
        return f"⚠️ {html.escape(exc.message)}"
    return S.say("{existing} class images in the folders, {missing} to generate with the base model.", request,
                 existing=sum(f.existing for f in folders), missing=sum(f.missing for f in folders))


def build_dreambooth_form(engine: Engine, queue: JobQueue) -> None:
    from core.training.dreambooth_config import DreamBoothConfig
    from core.training.optimizers import OPTIMIZER_TYPES

    tr = S.tr
    d = DreamBoothConfig(learning_rate=3e-6, output_name="my-model", caption_extension=".txt")  # seed 004's LR
    w: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown(tr(NOTE), elem_id="db-output-note")
            with gr.Row():
                selected = engine.selected_checkpoint()
                w["pretrained_model_name_or_path"] = gr.Dropdown(engine.checkpoint_titles(),
                                                                 value=selected.title if selected else None,
                                                                 label=tr("Base model (pretrained_model_name_or_path)"),
                                                                 elem_id="db-base-model")
                w["output_name"] = gr.Textbox(d.output_name, label=tr("Model name (output_name)"),
                                              elem_id="db-output-name")
            with gr.Row():
                w["train_data_dir"] = gr.Textbox("", label=tr("Instance folder (train_data_dir)"), elem_id="db-data-dir")
                w["reg_data_dir"] = gr.Textbox("", label=tr("Class images folder (reg_data_dir)"), elem_id="db-reg-dir")
            with gr.Row():
                w["class_prompt"] = gr.Textbox("", label=tr("Class prompt (class_prompt; empty: the folder's class)"),
                                               elem_id="db-class-prompt", scale=2)
                w["num_class_images"] = gr.Number(0, precision=0, minimum=0, elem_id="db-num-class-images",
                                                  label=tr("Class images per folder (num_class_images; 0 = use what "
                                                           "is there)"))
                w["prior_loss_weight"] = gr.Number(d.prior_loss_weight, minimum=0, elem_id="db-prior-loss-weight",
                                                   label=tr("Prior loss weight (prior_loss_weight)"))
            with gr.Row():
                count = gr.Button(tr("Count class images"), elem_id="db-count-class", scale=0, min_width=160)
                class_count = gr.Markdown(elem_id="db-class-count")
            with gr.Row():
                w["learning_rate"] = gr.Textbox(f"{d.learning_rate:g}", label=tr("Learning rate (learning_rate)"),
                                                elem_id="db-learning-rate")
                w["train_text_encoder"] = gr.Checkbox(False, label=tr("Train the text encoder (train_text_encoder)"),
                                                      elem_id="db-train-te")
                w["learning_rate_te"] = gr.Textbox("", label=tr("Text encoder learning rate (learning_rate_te)"),
                                                   elem_id="db-learning-rate-te")
            with gr.Row():
                w["max_train_steps"] = gr.Number(d.max_train_steps, precision=0, minimum=1,
                                                 label=tr("Steps (max_train_steps)"), elem_id="db-steps")
                w["max_train_epochs"] = gr.Number(0, precision=0, minimum=0, elem_id="db-epochs",
                                                  label=tr("Epochs (max_train_epochs; 0 = by steps)"))
                w["train_batch_size"] = gr.Number(d.train_batch_size, precision=0, minimum=1,
                                                  label=tr("Batch size (train_batch_size)"), elem_id="db-batch")
                w["resolution"] = gr.Textbox(d.resolution, label=tr("Resolution (resolution)"), elem_id="db-resolution")
                w["caption_extension"] = gr.Textbox(d.caption_extension, elem_id="db-caption-extension",
                                                    label=tr("Caption extension (caption_extension)"))
            with gr.Row():
                w["optimizer_type"] = gr.Dropdown(sorted(set(OPTIMIZER_TYPES.values())), value="AdamW",
                                                  label=tr("Optimizer (optimizer_type)"), elem_id="db-optimizer")
                w["mixed_precision"] = gr.Dropdown(["no", "fp16", "bf16"], value="no", elem_id="db-mixed-precision",
                                                   label=tr("Mixed precision (mixed_precision)"))
            with gr.Row():  # the switches on a row of their own: their labels are long in both languages
                w["use_8bit_adam"] = gr.Checkbox(False, label=tr("8-bit Adam where available (use_8bit_adam)"))
                w["gradient_checkpointing"] = gr.Checkbox(False, label=tr("Gradient checkpointing "
                                                                          "(gradient_checkpointing)"))
                w["use_ema"] = gr.Checkbox(False, label=tr("EMA weights (use_ema)"))
            with gr.Row():
                w["save_precision"] = gr.Dropdown(["fp16", "float", "bf16"], value=d.save_precision,
                                                  label=tr("Save precision (save_precision)"), elem_id="db-save-precision")
                w["save_every_n_epochs"] = gr.Number(0, precision=0, minimum=0, elem_id="db-save-every",
                                                     label=tr("Save every N epochs (save_every_n_epochs; 0 = only at "
                                                              "the end)"))
                w["seed"] = gr.Number(42, precision=0, label=tr("Seed (seed)"), elem_id="db-seed")
            with gr.Row():
                w["extract_lora"] = gr.Checkbox(False, label=tr("Extract a LoRA after training"),
                                                elem_id="db-extract-lora")
                w["extract_lora_dim"] = gr.Number(d.extract_lora_dim, precision=0, minimum=1,
                                                  label=tr("LoRA rank (dim)"), elem_id="db-extract-dim")
                w["extract_conv_dim"] = gr.Number(0, precision=0, minimum=0, label=tr("Conv rank (conv_dim; 0 = off)"),
                                                  elem_id="db-extract-conv-dim")
                w["extract_clamp_quantile"] = gr.Number(d.extract_clamp_quantile, minimum=0.5, maximum=1,
                                                        label=tr("Clamp quantile (clamp_quantile)"),
                                                        elem_id="db-extract-clamp")
            with gr.Row():
                config_path = gr.Textbox(label=tr("Config file (TOML)"), elem_id="db-config-path", scale=3)
                save_config = gr.Button(tr("Save config"), elem_id="db-save-config", scale=0, min_width=120)
                load_config = gr.Button(tr("Load config"), elem_id="db-load-config", scale=0, min_width=120)
        with gr.Column(scale=2):
            with gr.Row():
                start = gr.Button(tr("Start training"), variant="primary", elem_id="db-start")
                stop = gr.Button(tr("Stop and save"), elem_id="db-stop")
            progress = gr.HTML(elem_id="db-progress")
            message = gr.HTML(elem_id="db-message")
            files = gr.Markdown(elem_id="db-files")
    _wire(engine, queue, w, count, class_count, start, stop, progress, message, files, config_path, save_config,
          load_config)


def _wire(engine: Engine, queue: JobQueue, w: dict[str, Any], count, class_count, start, stop, progress, message,
          files, config_path, save_config, load_config) -> None:
    inputs = [w[name] for name in FIELDS]
    form = {*inputs}
    name_of = {id(w[name]): name for name in FIELDS}

    def collect(data: dict) -> dict[str, Any]:
        out = {name_of[id(c)]: v for c, v in data.items() if id(c) in name_of}
        title = out.get("pretrained_model_name_or_path")
        entry = engine.registry.find_checkpoint(title) if title else None
        out["pretrained_model_name_or_path"] = entry.name if entry is not None else title
        return out

    def on_count(data: dict, request: gr.Request) -> str:
        return class_count_text(collect(data), request)

    count.click(on_count, form, class_count)

    def on_start(data: dict, request: gr.Request):
        from core.training.jobs import dreambooth_job
        from ui.common import error_html, job_error_message, progress_html, ui_owner, watch_job

        try:
            config, _ = values_to_config(collect(data))
        except KilnError as exc:
            yield "", error_html(exc.message, request), ""
            return
        job = queue.submit(dreambooth_job(engine, config, config.pretrained_model_name_or_path),
                           f"DreamBooth {config.output_name}", ui_owner(request), kind="train")
        for status in watch_job(queue, job, interval=1.0):
            saved = "\n".join(f"- {html.escape(a.label)}" for a in job.artifacts if a.kind in ("checkpoint", "lora"))
            yield progress_html(status, request), "", saved
        error = job_error_message(job)
        saved = "\n".join(f"- `{p}`" for p in (job.result or []))
        notes = "".join(f"<br>{html.escape(a.label)}" for a in job.artifacts if a.kind == "note")
        if error:
            yield "", error_html(error, request) + notes, saved
            return
        yield "", S.say("Training finished: {n} files.", request, n=len(job.result or [])) + notes, saved

    start.click(on_start, form, [progress, message, files], show_progress="hidden")

    def on_stop(request: gr.Request) -> None:
        from ui.common import ui_owner

        for job in queue.jobs(ui_owner(request)):
            if job.kind == "train" and not job.done and job.description.startswith("DreamBooth "):
                queue.stop(job.id, owner=ui_owner(request))

    stop.click(on_stop, queue=False, show_progress="hidden")

    from core.training.dreambooth_config import load_dreambooth_config, save_dreambooth_config

    wire_config_files(engine, strings=S, names=list(FIELDS), inputs=inputs, path_box=config_path,
                      save_button=save_config, load_button=load_config, message=message, collect=collect,
                      to_config=values_to_config, to_values=config_to_values, save=save_dreambooth_config,
                      load=load_dreambooth_config, default_name="dreambooth.toml")
