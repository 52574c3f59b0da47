"""Checkpoint Merger (the WebUI's 模型融合 tab): A, B, C, the method and multiplier, format,
float16, config, VAE and discarded weights by the WebUI's labels, plus Kiln's text-encoder swap
and LoRA baking. The merge runs as a "merge" job on the queue (key k of n, ETA); when it is done
every checkpoint list on the page is refreshed so the new file can be chosen."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import KilnError
from core.merge.recipe import ADD_DIFFERENCE, NO_INTERPOLATION, NO_VAE, WEIGHTED_SUM
from ui.dataset.strings import Strings

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

NO_LORA = "None"

EN = {
    "merger.tab": "Checkpoint Merger",
    "merger.intro": "A merger of the two checkpoints will be generated in your checkpoint directory.",
    "merger.primary": "Primary model (A)",
    "merger.secondary": "Secondary model (B)",
    "merger.tertiary": "Tertiary model (C)",
    "merger.custom_name": "Custom Name (Optional)",
    "merger.multiplier": "Multiplier (M) - set to 0 to get model A",
    "merger.interp_method": "Interpolation Method",
    "merger.no_interpolation": "No interpolation",
    "merger.weighted_sum": "Weighted sum",
    "merger.add_difference": "Add difference",
    "merger.about_no_interpolation": "No interpolation will be used. Requires one model; A. Allows for format "
                                     "conversion and VAE baking.",
    "merger.about_weighted_sum": "A weighted sum will be used for interpolation. Requires two models; A and B. "
                                 "The result is calculated as A * (1 - M) + B * M",
    "merger.about_add_difference": "The difference between the last two models will be added to the first. "
                                   "Requires three models; A, B and C. The result is calculated as A + (B - C) * M",
    "merger.checkpoint_format": "Checkpoint format",
    "merger.save_as_half": "Save as float16",
    "merger.save_metadata": "Save metadata (.safetensors only)",
    "merger.config_source": "Copy config from",
    "merger.config_abc": "A, B or C",
    "merger.config_dont": "Don't",
    "merger.bake_in_vae": "Bake in VAE",
    "merger.discard_weights": "Discard weights with matching name",
    "merger.metadata": "Metadata",
    "merger.add_merge_recipe": "Add merge recipe metadata",
    "merger.copy_metadata_fields": "Copy metadata from merged models",
    "merger.metadata_json": "Metadata in JSON format",
    "merger.read_metadata": "Read metadata from selected checkpoints",
    "merger.extras": "Kiln extras",
    "merger.replace_te": "Replace text encoder of A with B's (keeps A's U-Net)",
    "merger.lora": "Merge a LoRA into the result",
    "merger.lora_weight": "LoRA weight",
    "merger.overwrite": "Overwrite an existing file of the same name",
    "merger.merge": "Merge",
    "merger.none": "None",
    "merger.saved": "Checkpoint saved to {path}",
    "merger.no_primary": "Failed: Merging requires a primary model.",
}

ZH = {
    "merger.tab": "模型融合",
    "merger.intro": "融合后的模型将保存在你的模型目录中。",
    "merger.primary": "主要模型 (A)",
    "merger.secondary": "第二模型 (B)",
    "merger.tertiary": "第三模型 (C)",
    "merger.custom_name": "自定义名称 (可选)",
    "merger.multiplier": "融合比例 (M) - 设为 0 等价于直接输出模型 A",
    "merger.interp_method": "融合算法",
    "merger.no_interpolation": "无插值",
    "merger.weighted_sum": "加权和",
    "merger.add_difference": "差额叠加",
    "merger.about_no_interpolation": "不进行插值。只需要一个模型：A。可用于转换格式和嵌入 VAE。",
    "merger.about_weighted_sum": "使用加权和进行插值。需要两个模型：A 和 B。计算方式为 A * (1 - M) + B * M",
    "merger.about_add_difference": "把后两个模型的差额叠加到第一个模型上。需要三个模型：A、B 和 C。"
                                   "计算方式为 A + (B - C) * M",
    "merger.checkpoint_format": "模型格式",
    "merger.save_as_half": "储存半精度 (float16) 模型",
    "merger.save_metadata": "保存元数据 (仅限 .safetensors)",
    "merger.config_source": "复制配置文件",
    "merger.config_abc": "A、B 或 C",
    "merger.config_dont": "不复制",
    "merger.bake_in_vae": "嵌入 VAE 模型",
    "merger.discard_weights": "移除匹配名称的权重",
    "merger.metadata": "元数据",
    "merger.add_merge_recipe": "添加融合配方元数据",
    "merger.copy_metadata_fields": "从被融合的模型复制元数据",
    "merger.metadata_json": "JSON 格式的元数据",
    "merger.read_metadata": "从所选模型读取元数据",
    "merger.extras": "Kiln 扩展功能",
    "merger.replace_te": "用 B 的文本编码器替换 A 的 (保留 A 的 U-Net)",
    "merger.lora": "把 LoRA 融合进结果",
    "merger.lora_weight": "LoRA 权重",
    "merger.overwrite": "覆盖同名的已有文件",
    "merger.merge": "融合",
    "merger.none": "无",
    "merger.saved": "模型已保存到 {path}",
    "merger.no_primary": "失败：融合需要一个主要模型。",
}

STRINGS: dict[str, dict[str, str]] = {"en": EN, "zh-CN": ZH}
_S = Strings(STRINGS)
tr = _S.tr
METHOD_KEYS = {NO_INTERPOLATION: "merger.no_interpolation", WEIGHTED_SUM: "merger.weighted_sum",
               ADD_DIFFERENCE: "merger.add_difference"}
ABOUT_KEYS = {NO_INTERPOLATION: "merger.about_no_interpolation", WEIGHTED_SUM: "merger.about_weighted_sum",
              ADD_DIFFERENCE: "merger.about_add_difference"}


def _checkpoints(engine: Engine) -> list[str]:
    return engine.checkpoint_titles()


def _vaes(engine: Engine) -> list[Any]:
    return [(tr("merger.none"), NO_VAE), *[(e.name, e.name) for e in engine.registry.vaes()]]


def _loras(engine: Engine) -> list[Any]:
    return [(tr("merger.none"), NO_LORA), *[(e.name, e.name) for e in engine.registry.loras()]]


def result_html(message: str, warnings: list[str]) -> str:
    lines = [message, *warnings]
    return f'<div class="kiln-notice">{html.escape(chr(10).join(lines))}</div>'


def build_merger_tab(engine: Engine, queue: JobQueue, checkpoint_dropdown: Any = None) -> None:
    """The tab (inside the caller's gr.Tabs); ``checkpoint_dropdown``: the page's checkpoint list,
    refreshed with the tab's own lists after a merge."""
    from core.merge.job import MergeChoices, read_metadata, submit_merge
    from ui.common import (
        checkpoint_choices,
        error_html,
        job_error_message,
        progress_html,
        ui_owner,
        watch_job,
    )

    with gr.Tab(tr("merger.tab"), id="merger", elem_id="tab-merger"):
        gr.Markdown(tr("merger.intro"), elem_id="merger-intro")
        with gr.Row(equal_height=False):
            with gr.Column(variant="compact"):
                with gr.Row():
                    titles = _checkpoints(engine)
                    primary = gr.Dropdown(titles, value=None, label=tr("merger.primary"), elem_id="merger-primary")
                    secondary = gr.Dropdown(titles, value=None, label=tr("merger.secondary"),
                                            elem_id="merger-secondary")
                    tertiary = gr.Dropdown(titles, value=None, label=tr("merger.tertiary"), elem_id="merger-tertiary")
                    refresh = gr.Button("🔄", elem_id="merger-refresh", scale=0, min_width=48,
                                        elem_classes=["kiln-tool-button"])
                custom_name = gr.Textbox(label=tr("merger.custom_name"), elem_id="merger-custom-name")
                multiplier = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label=tr("merger.multiplier"),
                                       elem_id="merger-multiplier")
                method = gr.Radio([(tr(key), name) for name, key in METHOD_KEYS.items()], value=WEIGHTED_SUM,
                                  label=tr("merger.interp_method"), elem_id="merger-interp-method")
                # One line per method, the chosen one shown (each translated by the browser).
                abouts = {name: gr.Markdown(tr(key), visible=name == WEIGHTED_SUM,
                                            elem_id=f"merger-about-{name.lower().replace(' ', '-')}")
                          for name, key in ABOUT_KEYS.items()}
                with gr.Row():
                    checkpoint_format = gr.Radio(["ckpt", "safetensors"], value="safetensors",
                                                 label=tr("merger.checkpoint_format"), elem_id="merger-format")
                    save_as_half = gr.Checkbox(False, label=tr("merger.save_as_half"), elem_id="merger-save-as-half")
                    save_metadata = gr.Checkbox(True, label=tr("merger.save_metadata"),
                                                elem_id="merger-save-metadata")
                with gr.Row():
                    config_source = gr.Radio([(tr("merger.config_abc"), 0), ("B", 1), ("C", 2),
                                              (tr("merger.config_dont"), 3)], value=0,
                                             label=tr("merger.config_source"), elem_id="merger-config-source")
                    bake_in_vae = gr.Dropdown(_vaes(engine), value=NO_VAE, label=tr("merger.bake_in_vae"),
                                              elem_id="merger-bake-in-vae")
                discard = gr.Textbox(label=tr("merger.discard_weights"), elem_id="merger-discard-weights")
                with gr.Accordion(tr("merger.metadata"), open=False, elem_id="merger-metadata"):
                    with gr.Row():
                        add_recipe = gr.Checkbox(True, label=tr("merger.add_merge_recipe"),
                                                 elem_id="merger-add-recipe")
                        copy_fields = gr.Checkbox(True, label=tr("merger.copy_metadata_fields"),
                                                  elem_id="merger-copy-metadata")
                    metadata_json = gr.TextArea("{}", label=tr("merger.metadata_json"), elem_id="merger-metadata-json")
                    read_meta = gr.Button(tr("merger.read_metadata"), elem_id="merger-read-metadata")
                with gr.Accordion(tr("merger.extras"), open=True, elem_id="merger-extras"):
                    replace_te = gr.Checkbox(False, label=tr("merger.replace_te"), elem_id="merger-replace-te")
                    with gr.Row():
                        lora = gr.Dropdown(_loras(engine), value=NO_LORA, label=tr("merger.lora"),
                                           elem_id="merger-lora")
                        lora_weight = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label=tr("merger.lora_weight"),
                                                elem_id="merger-lora-weight")
                overwrite = gr.Checkbox(False, label=tr("merger.overwrite"), elem_id="merger-overwrite")
                merge = gr.Button(tr("merger.merge"), variant="primary", elem_id="merger-merge")
            with gr.Column(variant="compact"):
                progress = gr.HTML(elem_id="merger-progress", elem_classes=["kiln-progress-box"])
                result = gr.HTML(elem_id="merger-result")

    lists = [primary, secondary, tertiary]

    def current_title(value: str | None) -> str | None:
        """A choice under the list's title now (a file's title gains its hash once it is hashed)."""
        entry = engine.registry.find_checkpoint(value) if value else None
        return entry.title if entry is not None else None

    def lists_update(*values: str | None) -> list[Any]:
        titles = _checkpoints(engine)
        updates = [gr.update(choices=titles, value=current_title(value)) for value in values]
        updates.append(gr.update(choices=_vaes(engine)))
        updates.append(gr.update(choices=_loras(engine)))
        if checkpoint_dropdown is not None:
            updates.append(checkpoint_choices(engine))
        return updates

    list_outputs = [*lists, bake_in_vae, lora, *([checkpoint_dropdown] if checkpoint_dropdown is not None else [])]

    def on_refresh(a, b, c):
        engine.refresh_models()
        return lists_update(a, b, c)

    refresh.click(on_refresh, inputs=lists, outputs=list_outputs, show_progress="hidden")
    read_meta.click(lambda a, b, c: read_metadata(engine, [a, b, c]), inputs=lists, outputs=metadata_json,
                    show_progress="hidden")
    method.change(lambda m: [gr.update(visible=name == m) for name in abouts], inputs=method,
                  outputs=list(abouts.values()), show_progress="hidden")

    def run(a, b, c, name, m, how, fmt, half, meta, recipe, copy, meta_json, config, vae, discard_text, te,
            lora_name, weight, replace, request: gr.Request):
        skip_lists = [gr.update() for _ in list_outputs]
        if not a:
            yield "", error_html(_S.say("merger.no_primary", request), request), *skip_lists
            return
        choices = MergeChoices(
            primary=a, secondary=b, tertiary=c, interp_method=how, multiplier=float(m), save_as_half=bool(half),
            custom_name=name or "", checkpoint_format=fmt, config_source=int(config), bake_in_vae=vae or NO_VAE,
            discard_weights=discard_text or "", save_metadata=bool(meta), add_merge_recipe=bool(recipe),
            copy_metadata_fields=bool(copy), metadata_json=meta_json or "{}", replace_text_encoder=bool(te),
            lora=None if lora_name in (None, "", NO_LORA) else lora_name, lora_weight=float(weight),
            overwrite=bool(replace))
        try:
            job = submit_merge(engine, queue, choices, owner=ui_owner(request))
        except KilnError as exc:
            yield "", error_html(exc.message, request), *skip_lists
            return
        for status in watch_job(queue, job):
            yield progress_html(status, request), "", *skip_lists
        message = job_error_message(job)
        if message:
            yield "", error_html(message, request), *skip_lists
            return
        if job.result is None:  # interrupted from the Queue tab: nothing was written
            yield "", "", *skip_lists
            return
        done = _S.say("merger.saved", request, path=str(job.result.path))
        yield "", result_html(done, job.result.warnings), *lists_update(a, b, c)

    merge.click(run, inputs=[primary, secondary, tertiary, custom_name, multiplier, method, checkpoint_format,
                             save_as_half, save_metadata, add_recipe, copy_fields, metadata_json, config_source,
                             bake_in_vae, discard, replace_te, lora, lora_weight, overwrite],
                outputs=[progress, result, *list_outputs], show_progress="hidden")
