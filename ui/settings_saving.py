"""The Settings tab's saving options (the WebUI's "Saving images/grids" and "Saving to a
directory" sections) and the infotext paste option for styles; WebUI labels and Chinese terms."""

from __future__ import annotations

from typing import Any

import gradio as gr

from core.settings import SAMPLE_FORMATS, Options
from core.styles import INFOTEXT_STYLES_CHOICES
from ui.dataset.strings import Strings

ZH = {
    "Saving images/grids": "保存图像/宫格图",
    "File format for images": "图像文件格式",
    "Images filename pattern": "图像文件名格式",
    "Empty: [seed] in a subdirectory, else [seed]-[prompt_spaces]. Tags: [seed] [prompt_words] [model_name] "
    "[datetime<%Y%m%d>] [steps] [cfg] [sampler] [styles] [prompt_hash] ...":
        "留空：保存到子文件夹时为 [seed]，否则为 [seed]-[prompt_spaces]。可用标签：[seed] [prompt_words] [model_name] "
        "[datetime<%Y%m%d>] [steps] [cfg] [sampler] [styles] [prompt_hash] ……",
    "Add number to filename when saving": "保存时在文件名中添加序号",
    "Always save all generated image grids": "始终保存所有生成的宫格图",
    "File format for grids": "宫格图文件格式",
    "Save text information about generation parameters as chunks to png files":
        "将生成参数作为文本信息保存到 PNG 文件中（JPEG/WebP/AVIF 存入 EXIF）",
    "Create a text file with infotext next to every generated image": "在每张生成的图像旁创建一个包含生成参数的文本文件",
    "Quality for saved jpeg and avif images": "保存的 JPEG 和 AVIF 图像的质量",
    "Use lossless compression for webp images": "对 WebP 图像使用无损压缩",
    "Saving to a directory": "保存到文件夹",
    "Save images to a subdirectory": "将图像保存到子文件夹",
    "Save grids to a subdirectory": "将宫格图保存到子文件夹",
    "Directory name pattern": "文件夹名称格式",
    "Below the output folder, e.g. [date] or [date]/[model_name]": "位于输出文件夹之下，例如 [date] 或 [date]/[model_name]",
    "Max prompt words for [prompt_words] pattern": "[prompt_words] 格式的最大提示词数量",
    "Infer styles from prompts of pasted infotext": "从粘贴的生成参数的提示词中推断样式",
    "Ignore": "忽略",
    "Apply": "应用",
    "Discard": "丢弃",
    "Apply if any": "如果有则应用",
}
PATTERN_INFO = next(key for key in ZH if key.startswith("Empty:"))
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
S = Strings(STRINGS)


def build_saving_settings(o: Options) -> dict[str, Any]:
    """The components, by WebUI option key (``apply_settings`` stores them like the others)."""
    f: dict[str, Any] = {}
    formats = list(SAMPLE_FORMATS)
    with gr.Accordion(S.tr("Saving images/grids"), open=False, elem_id="settings-saving"):
        with gr.Row():
            f["samples_format"] = gr.Dropdown(formats, value=o.samples_format, label=S.tr("File format for images"),
                                              elem_id="settings-samples-format")
            f["grid_format"] = gr.Dropdown(formats, value=o.grid_format, label=S.tr("File format for grids"),
                                           elem_id="settings-grid-format")
        f["samples_filename_pattern"] = gr.Textbox(
            value=o.samples_filename_pattern, label=S.tr("Images filename pattern"), placeholder="[seed]",
            info=S.tr(PATTERN_INFO), elem_id="settings-samples-filename-pattern")
        f["save_images_add_number"] = gr.Checkbox(value=o.save_images_add_number,
                                                  label=S.tr("Add number to filename when saving"))
        f["grid_save"] = gr.Checkbox(value=o.grid_save, label=S.tr("Always save all generated image grids"))
        f["enable_pnginfo"] = gr.Checkbox(
            value=o.enable_pnginfo, label=S.tr("Save text information about generation parameters as chunks to png files"))
        f["save_txt"] = gr.Checkbox(value=o.save_txt,
                                    label=S.tr("Create a text file with infotext next to every generated image"))
        f["jpeg_quality"] = gr.Slider(1, 100, value=o.jpeg_quality, step=1,
                                      label=S.tr("Quality for saved jpeg and avif images"),
                                      elem_id="settings-jpeg-quality")
        f["webp_lossless"] = gr.Checkbox(value=o.webp_lossless, label=S.tr("Use lossless compression for webp images"))
    with gr.Accordion(S.tr("Saving to a directory"), open=False, elem_id="settings-saving-dirs"):
        f["save_to_dirs"] = gr.Checkbox(value=o.save_to_dirs, label=S.tr("Save images to a subdirectory"))
        f["grid_save_to_dirs"] = gr.Checkbox(value=o.grid_save_to_dirs, label=S.tr("Save grids to a subdirectory"))
        f["directories_filename_pattern"] = gr.Textbox(
            value=o.directories_filename_pattern, label=S.tr("Directory name pattern"), placeholder="[date]",
            info=S.tr("Below the output folder, e.g. [date] or [date]/[model_name]"),
            elem_id="settings-directories-filename-pattern")
        f["directories_max_prompt_words"] = gr.Slider(1, 20, value=o.directories_max_prompt_words, step=1,
                                                      label=S.tr("Max prompt words for [prompt_words] pattern"))
    f["infotext_styles"] = gr.Radio([(S.tr(c), c) for c in INFOTEXT_STYLES_CHOICES], value=o.infotext_styles,
                                    label=S.tr("Infer styles from prompts of pasted infotext"),
                                    elem_id="settings-infotext-styles")
    return f
