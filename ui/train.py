"""The Train tab: kohya's LoRA parameters by their names, the seeds' advice beside them, a run on
the studio's queue with progress, ETA, loss curve and the files as they are saved, and the
same TOML as ``python -m core.training`` for Save config / Load config.

The fields become a ``TrainConfig`` through ``config_from_dict`` (the TOML loader's own
checks: a learning rate that is not a number is named), then a ``LoraJob`` through
``core.training.from_config`` — the headless path, so the tab trains exactly what the CLI trains.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import KilnError
from ui.dataset.strings import Strings
from ui.train_config_files import wire_config_files
from ui.train_sheet import build_sheet_section, sheet_updates, wire_sheet_section

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

ZH = {
    "Train": "训练",
    "Base model (pretrained_model_name_or_path)": "底模 (pretrained_model_name_or_path)",
    "Training folder (train_data_dir)": "训练集目录 (train_data_dir)",
    "Regularization folder (reg_data_dir)": "正则化目录 (reg_data_dir)",
    "Output folder (output_dir)": "输出目录 (output_dir)",
    "Output name (output_name)": "输出名称 (output_name)",
    "Network type (network_module)": "网络类型 (network_module)",
    "Network rank (network_dim)": "网络维度 (network_dim)",
    "Network alpha (network_alpha)": "网络 Alpha (network_alpha)",
    "Conv rank, LoCon (conv_dim; 0 = off)": "卷积维度 LoCon (conv_dim；0 = 关闭)",
    "Learning rate": "学习率 (learning_rate)",
    "U-Net learning rate (unet_lr)": "U-Net 学习率 (unet_lr)",
    "Text encoder learning rate (text_encoder_lr)": "文本编码器学习率 (text_encoder_lr)",
    "Optimizer (optimizer_type)": "优化器 (optimizer_type)",
    "LR scheduler (lr_scheduler)": "学习率调度器 (lr_scheduler)",
    "Warmup steps or ratio (lr_warmup_steps)": "预热步数或比例 (lr_warmup_steps)",
    "Epochs (max_train_epochs)": "轮数 (max_train_epochs)",
    "Batch size (train_batch_size)": "批量大小 (train_batch_size)",
    "Resolution": "分辨率 (resolution)",
    "Enable buckets (enable_bucket)": "启用分桶 (enable_bucket)",
    "Save every N epochs": "每 N 轮保存一次 (save_every_n_epochs)",
    "Caption extension": "标注文件扩展名 (caption_extension)",
    "Shuffle caption": "打乱标注 (shuffle_caption)",
    "Keep tokens": "保留前 N 个标签 (keep_tokens)",
    "Flip augmentation (flip_aug)": "水平翻转增强 (flip_aug)",
    "Color augmentation (color_aug)": "颜色增强 (color_aug)",
    "Mixed precision (mixed_precision)": "混合精度 (mixed_precision)",
    "Gradient checkpointing": "梯度检查点 (gradient_checkpointing)",
    "xformers": "xformers 注意力 (xformers)",
    "TensorBoard log folder (logging_dir)": "TensorBoard 日志目录 (logging_dir)",
    "Seed": "随机种子 (Seed)",
    "Clip skip": "CLIP 终止层数 (Clip skip)",
    "Noise offset": "噪声偏移 (noise_offset)",
    "Min SNR gamma": "最小信噪比 gamma (min_snr_gamma)",
    "Save training state (save_state)": "保存训练状态 (save_state)",
    "Resume from a state (resume)": "从训练状态继续 (resume)",
    "Sample prompts file (sample_prompts)": "预览提示词文件 (sample_prompts)",
    "Sample every N epochs": "每 N 轮生成预览图 (sample_every_n_epochs)",
    "Sample sampler": "预览图采样器 (sample_sampler)",
    "Samples": "预览图",
    "Train anyway when the dataset check finds errors": "数据集检查发现错误时仍然训练",
    "Train without the options Kiln does not have": "忽略 Kiln 不支持的选项继续训练",
    "Start training": "开始训练",
    "Stop and save": "停止并保存",
    "Config file (TOML)": "配置文件 (TOML)",
    "Save config": "保存配置",
    "Load config": "加载配置",
    "Advice": "建议",
    "Loss": "损失 (loss)",
    "Saved files": "已保存的文件",
    "Config saved to {path}.": "配置已保存到 {path}。",
    "Config loaded from {path}.": "已从 {path} 加载配置。",
    "Keys Kiln does not know: {keys}": "Kiln 不认识的键：{keys}",
    "Training finished: {n} files.": "训练完成：{n} 个文件。",
    "Paused: short jobs of others are running between epochs.": "已暂停：正在在两轮之间运行其他人的短任务。",
    "step": "步数",
    "loss": "损失",
    "average loss": "平均损失",
}
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
# The WebUI's embedding / hypernetwork sub-tabs (ui/train_ti.py) ship their strings with this tab's.
from ui.train_db import STRINGS as _DB_STRINGS  # noqa: E402
from ui.train_ti import STRINGS as _TI_STRINGS  # noqa: E402

STRINGS = {lang: {**_TI_STRINGS[lang], **_DB_STRINGS[lang], **table} for lang, table in STRINGS.items()}
S = Strings(STRINGS)

# The network choice as kohya_ss's GUI names it → the LyCORIS algo (None: kohya's networks.lora).
NETWORK_TYPES = {"LoRA": None, "DoRA": None, "LyCORIS/LoCon": "locon", "LyCORIS/LoHa": "loha",
                 "LyCORIS/LoKr": "lokr"}
DORA_ARG = "dora_wd=True"  # "DoRA": kohya's networks.lora with a trained magnitude (see core/training/network.py)

# (field name, kind): the order of the form, and how a value comes out of its widget.
FIELDS = ("pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "output_dir", "output_name",
          "network_type", "network_dim", "network_alpha", "conv_dim", "learning_rate", "unet_lr", "text_encoder_lr",
          "optimizer_type", "lr_scheduler", "lr_warmup_steps", "max_train_epochs", "train_batch_size", "resolution",
          "enable_bucket", "save_every_n_epochs", "caption_extension", "shuffle_caption", "keep_tokens", "flip_aug",
          "seed", "clip_skip", "noise_offset", "min_snr_gamma", "save_state", "resume", "sample_prompts",
          "color_aug", "mixed_precision", "gradient_checkpointing", "xformers", "logging_dir",
          "sample_every_n_epochs", "sample_sampler")
# The tab's starting values: the seeds' usual LoRA (kohya's CLI defaults are for DreamBooth).
UI_DEFAULTS = {"network_type": "LoRA", "network_dim": 32, "network_alpha": 16, "conv_dim": 0, "learning_rate": "1e-4", "unet_lr": "1e-4",
               "text_encoder_lr": "5e-5", "optimizer_type": "AdamW", "lr_scheduler": "cosine_with_restarts",
               "lr_warmup_steps": "0", "max_train_epochs": 10, "train_batch_size": 1, "resolution": "512,512",
               "enable_bucket": True, "save_every_n_epochs": 1, "caption_extension": ".txt", "shuffle_caption": True,
               "keep_tokens": 1, "flip_aug": False, "seed": 42, "clip_skip": 1, "noise_offset": 0.0,
               "min_snr_gamma": 0.0, "save_state": False, "resume": "", "sample_prompts": "",
               "sample_every_n_epochs": 1, "sample_sampler": "euler_a", "output_name": "my-lora", "reg_data_dir": "",
               "train_data_dir": "", "output_dir": ""}


def values_to_config(values: dict[str, Any]):
    """Form values → (TrainConfig, unknown keys), checked as a TOML would be."""
    from core.training.config import check_config, config_from_dict

    raw: dict[str, Any] = {"network_module": "networks.lora"}
    algo = NETWORK_TYPES.get(values.get("network_type") or "LoRA")
    if algo:
        raw["network_module"] = "lycoris.kohya"
        raw["network_args"] = [f"algo={algo}"]
    elif values.get("network_type") == "DoRA":
        raw["network_args"] = [DORA_ARG]
    for key, value in values.items():
        if key == "network_type":
            continue
        if key == "conv_dim":
            if value:
                raw.setdefault("network_args", []).extend([f"conv_dim={int(value)}", f"conv_alpha={int(value)}"])
            continue
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                continue
        if key in ("min_snr_gamma", "noise_offset") and not value:
            continue
        raw[key] = value
    config, unknown = config_from_dict(raw)
    check_config(config)
    return config, unknown


def config_to_values(config) -> dict[str, Any]:
    from core.training.advice import network_kind

    out = {}
    for key in FIELDS:
        if key == "network_type":
            kind = network_kind(config) if "lycoris" in (config.network_module or "") else "lora"
            out[key] = next((name for name, algo in NETWORK_TYPES.items() if algo == kind), "LoRA")
            if kind == "lora" and DORA_ARG in (config.network_args or []):
                out[key] = "DoRA"
            continue
        if key == "conv_dim":
            conv = [a for a in (config.network_args or []) if a.startswith("conv_dim")]
            out[key] = int(float(conv[0].split("=")[1])) if conv else 0
            continue
        value = getattr(config, key)
        out[key] = "" if value is None else value
    return out


def loss_rows(job) -> list[dict[str, Any]]:
    return [{"step": row["step"], "loss": row["loss"], "kind": "loss"} for row in job.metrics if "loss" in row] + \
           [{"step": row["step"], "loss": row["average_loss"], "kind": "average loss"}
            for row in job.metrics if "average_loss" in row]


def build_train_tab(engine: Engine, queue: JobQueue) -> None:
    from ui.train_ti import train_subtabs

    with train_subtabs(engine, queue):  # the WebUI's Create embedding / Create hypernetwork / Train beside it
        _build_lora_form(engine, queue)


def _build_lora_form(engine: Engine, queue: JobQueue) -> None:
    from core.training.optimizers import OPTIMIZER_TYPES
    from core.training.schedulers import SCHEDULERS

    tr = S.tr
    widgets: dict[str, Any] = {}
    d = UI_DEFAULTS
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                widgets["pretrained_model_name_or_path"] = gr.Dropdown(
                    engine.checkpoint_titles(), value=(engine.selected_checkpoint().title
                                                       if engine.selected_checkpoint() else None),
                    label=tr("Base model (pretrained_model_name_or_path)"), elem_id="train-base-model")
                widgets["train_data_dir"] = gr.Textbox(d["train_data_dir"], label=tr("Training folder (train_data_dir)"),
                                                       elem_id="train-data-dir")
                widgets["reg_data_dir"] = gr.Textbox("", label=tr("Regularization folder (reg_data_dir)"),
                                                     elem_id="train-reg-dir")
            with gr.Row():
                widgets["output_dir"] = gr.Textbox(str(engine.settings.paths.lora_dir),
                                                   label=tr("Output folder (output_dir)"), elem_id="train-output-dir")
                widgets["output_name"] = gr.Textbox(d["output_name"], label=tr("Output name (output_name)"),
                                                    elem_id="train-output-name")
            with gr.Row():
                widgets["network_type"] = gr.Dropdown(list(NETWORK_TYPES), value=d["network_type"],
                                                      label=tr("Network type (network_module)"),
                                                      elem_id="train-network-type")
                widgets["network_dim"] = gr.Number(d["network_dim"], precision=0, minimum=1,
                                                   label=tr("Network rank (network_dim)"), elem_id="train-network-dim")
                widgets["network_alpha"] = gr.Number(d["network_alpha"], minimum=0,
                                                     label=tr("Network alpha (network_alpha)"),
                                                     elem_id="train-network-alpha")
                widgets["conv_dim"] = gr.Number(0, precision=0, minimum=0, label=tr("Conv rank, LoCon (conv_dim; 0 = off)"))
            with gr.Row():
                widgets["learning_rate"] = gr.Textbox(d["learning_rate"], label=tr("Learning rate"),
                                                      elem_id="train-learning-rate")
                widgets["unet_lr"] = gr.Textbox(d["unet_lr"], label=tr("U-Net learning rate (unet_lr)"),
                                                elem_id="train-unet-lr")
                widgets["text_encoder_lr"] = gr.Textbox(d["text_encoder_lr"],
                                                        label=tr("Text encoder learning rate (text_encoder_lr)"),
                                                        elem_id="train-te-lr")
            with gr.Row():
                widgets["optimizer_type"] = gr.Dropdown(sorted(set(OPTIMIZER_TYPES.values())), value="AdamW",
                                                        label=tr("Optimizer (optimizer_type)"), elem_id="train-optimizer")
                widgets["lr_scheduler"] = gr.Dropdown(list(SCHEDULERS), value=d["lr_scheduler"],
                                                      label=tr("LR scheduler (lr_scheduler)"), elem_id="train-scheduler")
                widgets["lr_warmup_steps"] = gr.Textbox(d["lr_warmup_steps"],
                                                        label=tr("Warmup steps or ratio (lr_warmup_steps)"))
            with gr.Row():
                widgets["max_train_epochs"] = gr.Number(d["max_train_epochs"], precision=0, minimum=1,
                                                        label=tr("Epochs (max_train_epochs)"), elem_id="train-epochs")
                widgets["train_batch_size"] = gr.Number(d["train_batch_size"], precision=0, minimum=1,
                                                        label=tr("Batch size (train_batch_size)"), elem_id="train-batch")
                widgets["resolution"] = gr.Textbox(d["resolution"], label=tr("Resolution"), elem_id="train-resolution")
                widgets["save_every_n_epochs"] = gr.Number(d["save_every_n_epochs"], precision=0, minimum=0,
                                                           label=tr("Save every N epochs"), elem_id="train-save-every")
            with gr.Row():
                widgets["caption_extension"] = gr.Textbox(d["caption_extension"], label=tr("Caption extension"),
                                                          elem_id="train-caption-extension")
                widgets["keep_tokens"] = gr.Number(d["keep_tokens"], precision=0, minimum=0, label=tr("Keep tokens"))
                widgets["seed"] = gr.Number(d["seed"], precision=0, label=tr("Seed"), elem_id="train-seed")
                widgets["clip_skip"] = gr.Number(d["clip_skip"], precision=0, minimum=1, maximum=12,
                                                 label=tr("Clip skip"))
                widgets["noise_offset"] = gr.Number(0.0, minimum=0, label=tr("Noise offset"))
                widgets["min_snr_gamma"] = gr.Number(0.0, minimum=0, label=tr("Min SNR gamma"))
            with gr.Row():
                widgets["enable_bucket"] = gr.Checkbox(d["enable_bucket"], label=tr("Enable buckets (enable_bucket)"))
                widgets["shuffle_caption"] = gr.Checkbox(d["shuffle_caption"], label=tr("Shuffle caption"))
                widgets["flip_aug"] = gr.Checkbox(False, label=tr("Flip augmentation (flip_aug)"))
            with gr.Row():
                widgets["color_aug"] = gr.Checkbox(False, label=tr("Color augmentation (color_aug)"))
                widgets["save_state"] = gr.Checkbox(False, label=tr("Save training state (save_state)"))
                widgets["gradient_checkpointing"] = gr.Checkbox(False, label=tr("Gradient checkpointing"))
            with gr.Row():
                widgets["mixed_precision"] = gr.Dropdown(["no", "fp16", "bf16"], value="no",
                                                         label=tr("Mixed precision (mixed_precision)"),
                                                         elem_id="train-mixed-precision")
                widgets["xformers"] = gr.Checkbox(False, label=tr("xformers"))
                widgets["logging_dir"] = gr.Textbox("", label=tr("TensorBoard log folder (logging_dir)"), scale=2)
            widgets["resume"] = gr.Textbox("", label=tr("Resume from a state (resume)"))
            with gr.Row():
                from core.training.samples import KOHYA_SAMPLERS

                widgets["sample_prompts"] = gr.Textbox("", label=tr("Sample prompts file (sample_prompts)"),
                                                       elem_id="train-sample-prompts", scale=3)
                widgets["sample_every_n_epochs"] = gr.Number(d["sample_every_n_epochs"], precision=0, minimum=0,
                                                             label=tr("Sample every N epochs"))
                widgets["sample_sampler"] = gr.Dropdown(list(KOHYA_SAMPLERS), value=d["sample_sampler"],
                                                        label=tr("Sample sampler"))
            with gr.Row():
                ignore_checks = gr.Checkbox(False, label=tr("Train anyway when the dataset check finds errors"),
                                            elem_id="train-ignore-checks")
                allow_unsupported = gr.Checkbox(False, label=tr("Train without the options Kiln does not have"))
            with gr.Row():
                config_path = gr.Textbox(label=tr("Config file (TOML)"), elem_id="train-config-path", scale=3)
                save_config = gr.Button(tr("Save config"), elem_id="train-save-config", scale=0, min_width=120)
                load_config = gr.Button(tr("Load config"), elem_id="train-load-config", scale=0, min_width=120)
        with gr.Column(scale=2):
            advice = gr.Markdown(elem_id="train-advice")
            with gr.Row():
                start = gr.Button(tr("Start training"), variant="primary", elem_id="train-start")
                stop = gr.Button(tr("Stop and save"), elem_id="train-stop")
            progress = gr.HTML(elem_id="train-progress")
            message = gr.HTML(elem_id="train-message")
            plot = gr.LinePlot(x="step", y="loss", color="kind", label=tr("Loss"), elem_id="train-loss-plot",
                               height=260)
            files = gr.Markdown(elem_id="train-files")
            samples = gr.Gallery(label=tr("Samples"), columns=4, height=220, elem_id="train-samples")
    sheet = build_sheet_section()

    names = list(FIELDS)
    inputs = [widgets[name] for name in names]
    # Gradio hands a set of inputs over as one {component: value} dict (it cannot fill *args).
    form = {*inputs}
    component_name = {id(widgets[name]): name for name in names}

    def collect(data: dict) -> dict[str, Any]:
        out = {component_name[id(c)]: v for c, v in data.items() if id(c) in component_name}
        title = out.get("pretrained_model_name_or_path")
        entry = engine.registry.find_checkpoint(title) if title else None
        out["pretrained_model_name_or_path"] = str(entry.path) if entry is not None else title
        return out

    def on_advice(data: dict):
        from core.training.advice import config_guidance

        try:
            config, _ = values_to_config(collect(data))
        except KilnError as exc:
            return f"⚠️ {html.escape(exc.message)}"
        notes = config_guidance(config)
        return "\n".join(f"- {n}" for n in notes)

    for name in ("optimizer_type", "learning_rate", "network_dim", "unet_lr", "text_encoder_lr", "lr_scheduler"):
        widgets[name].change(on_advice, form, advice, show_progress="hidden")

    sheet_form = {name: widgets[name] for name in ("output_dir", "output_name", "sample_prompts",
                                                   "pretrained_model_name_or_path")}
    wire_sheet_section(sheet, engine, queue, sheet_form, lambda title: title or None)
    run_outputs = [progress, message, plot, files, samples]

    def on_start(data: dict, request: gr.Request):
        from core.training.from_config import lora_job
        from core.training.jobs import training_job
        from ui.common import error_html, job_error_message, progress_html, ui_owner, watch_job

        def shown(*values: Any) -> dict[Any, Any]:
            return dict(zip(run_outputs, values))

        ignore, allow = data[ignore_checks], data[allow_unsupported]
        title = data[widgets["pretrained_model_name_or_path"]]
        try:
            config, unknown = values_to_config(collect(data))
            job_spec = lora_job(config, default_output_dir=engine.settings.paths.lora_dir, allow_unsupported=bool(allow),
                                ignore_check_errors=bool(ignore))
        except KilnError as exc:
            yield shown("", error_html(exc.message, request), gr.update(), "", gr.update())
            return
        job = queue.submit(training_job(engine, job_spec, title or None), f"LoRA {config.effective_output_name()}",
                           ui_owner(request), kind="train")
        for status in watch_job(queue, job, interval=1.0):
            note = (S.say("Paused: short jobs of others are running between epochs.", request)
                    if status.snapshot is not None and status.snapshot.state == "paused" else "")
            saved = "\n".join(f"- {html.escape(a.label)}" for a in job.artifacts if a.kind == "lora")
            yield shown(progress_html(status, request), note, _frame(loss_rows(job)), saved, sample_items(job))
        error = job_error_message(job)
        saved = "\n".join(f"- `{p}`" for p in (job.result or []))
        if error:
            yield shown("", error_html(error, request), _frame(loss_rows(job)), saved, sample_items(job))
            return
        notes = "".join(f"<br>{html.escape(a.label)}" for a in job.artifacts if a.kind == "note")
        yield shown("", S.say("Training finished: {n} files.", request, n=len(job.result or [])) + notes,
                    _frame(loss_rows(job)), saved, sample_items(job))
        if data[sheet.auto] and job.result:
            values = {"output_dir": str(job_spec.output.output_dir), "output_name": job_spec.output.output_name,
                      "sample_prompts": data[widgets["sample_prompts"]], "checkpoint": title or None,
                      "weights": data[sheet.weights], "prompts": data[sheet.prompts], "seed": data[sheet.seed],
                      "steps": data[sheet.steps]}
            yield from sheet_updates(sheet, engine, queue, values, request)

    start.click(on_start, {*inputs, ignore_checks, allow_unsupported, *sheet.inputs}, [*run_outputs, *sheet.outputs],
                show_progress="hidden")

    def on_stop(request: gr.Request) -> None:
        from ui.common import ui_owner

        for job in queue.jobs(ui_owner(request)):
            if job.kind == "train" and not job.done:
                queue.stop(job.id, owner=ui_owner(request))

    stop.click(on_stop, queue=False, show_progress="hidden")

    from core.training.config import load_config as read_config
    from core.training.config_toml import save_config as write_config

    wire_config_files(engine, strings=S, names=names, inputs=inputs, path_box=config_path, save_button=save_config,
                      load_button=load_config, message=message, collect=collect, to_config=values_to_config,
                      to_values=config_to_values, save=write_config, load=read_config, default_name="train.toml")


def sample_items(job) -> list[tuple[Any, str]]:
    """The samples as pictures (their folder may be anywhere on the server, outside what the page serves)."""
    from PIL import Image

    items = []
    for artifact in job.artifacts:
        if artifact.kind == "sample" and artifact.path:
            with Image.open(artifact.path) as image:
                items.append((image.copy(), artifact.label))
    return items


def _frame(rows: list[dict[str, Any]]):
    """The loss table for the plot; no update while there is no row yet (a LinePlot that was
    once sent an empty table draws no lines for later data: Gradio 6 keeps the empty encoding)."""
    import pandas as pd

    if not rows:
        return gr.update()

    frame = pd.DataFrame(rows, columns=["step", "loss", "kind"])
    return frame.astype({"step": "int64", "loss": "float64", "kind": object})  # numbers, not categories
