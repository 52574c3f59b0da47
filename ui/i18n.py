"""Every string the UI shows, in English and Simplified Chinese (the WebUI's usual wording).

Keys are the English text. Static labels go through ``t(key)`` (Gradio translates them in the
browser from its locale); text a handler builds at run time goes through ``translate(key,
request)``, which picks the language from the request's Accept-Language header. ``t`` raises
KeyError for a key missing here, so a new label cannot ship untranslated.

Settings → "Language of the page" (config.json ``ui_language``) overrides the browser: the page
gets a small script (``locale_script``) that makes Gradio's I18n see that locale, and run-time
text follows it too (``request_locale``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gradio as gr
from gradio.i18n import I18nData

EN: dict[str, str] = {
    # top row and tabs
    "Stable Diffusion checkpoint": "Stable Diffusion checkpoint",
    "Refresh": "Refresh",
    "No checkpoint found. Put a .safetensors checkpoint into {folder} and press 🔄 next to the checkpoint list.":
        "No checkpoint found. Put a .safetensors checkpoint into {folder} and press 🔄 next to the checkpoint list.",
    "txt2img": "txt2img",
    "PNG Info": "PNG Info",
    "Dataset": "Dataset",
    "Settings": "Settings",
    "Extensions that failed to load (see the Extensions tab):":
        "Extensions that failed to load (see the Extensions tab):",
    # txt2img
    "Prompt": "Prompt",
    "Negative prompt": "Negative prompt",
    "Generate": "Generate",
    "Interrupt": "Interrupt",
    "Skip": "Skip",
    "Sampling method": "Sampling method",
    "Schedule type": "Schedule type",
    "Sampling steps": "Sampling steps",
    "Width": "Width",
    "Height": "Height",
    "Batch count": "Batch count",
    "Batch size": "Batch size",
    "CFG Scale": "CFG Scale",
    "Rescale CFG": "Rescale CFG",
    "Seed": "Seed",
    "Random seed": "Random seed",
    "Reuse seed": "Reuse seed",
    "Extra": "Extra",
    "Variation seed": "Variation seed",
    "Variation strength": "Variation strength",
    "Resize seed from width": "Resize seed from width",
    "Resize seed from height": "Resize seed from height",
    "Hires. fix": "Hires. fix",
    "Upscaler": "Upscaler",
    "Hires steps": "Hires steps",
    "Denoising strength": "Denoising strength",
    "Upscale by": "Upscale by",
    "Resize width to": "Resize width to",
    "Resize height to": "Resize height to",
    "Hires sampling method": "Hires sampling method",
    "Hires schedule type": "Hires schedule type",
    "Use same sampler": "Use same sampler",
    "Use same scheduler": "Use same scheduler",
    "Output": "Output",
    "Live preview": "Live preview",
    "Generation info": "Generation info",
    "Progress": "Progress",
    "Queued": "Queued",
    "position": "position",
    "Step": "Step",
    "ETA": "ETA",
    "Done": "Done",
    "Interrupted": "Interrupted",
    "Error": "Error",
    "Loading checkpoint": "Loading checkpoint",
    "Could not load": "Could not load",
    "Using": "Using",
    "Paused": "Paused",
    "Queue": "Queue",
    "Job": "Job",
    "Owner": "Owner",
    "Kind": "Kind",
    "What": "What",
    "State": "State",
    "Position": "Position",
    "Submitted": "Submitted",
    "Running": "Running",
    "Cancel job": "Cancel job",
    "Stop and save": "Stop and save",
    "you": "you",
    "No such job among yours.": "No such job among yours.",
    "asked to stop": "asked to stop",
    "already finished": "already finished",
    "images": "images",
    # img2img
    "img2img": "img2img",
    "Inpaint": "Inpaint",
    "Inpaint upload": "Inpaint upload",
    "Batch": "Batch",
    "Image for img2img": "Image for img2img",
    "Image for inpainting with mask": "Image for inpainting with mask",
    "Mask": "Mask",
    "Drop a picture here or click to upload, then paint over what to repaint":
        "Drop a picture here or click to upload, then paint over what to repaint",
    "Resize mode": "Resize mode",
    "Just resize": "Just resize",
    "Crop and resize": "Crop and resize",
    "Resize and fill": "Resize and fill",
    "Just resize (latent upscale)": "Just resize (latent upscale)",
    "Mask blur": "Mask blur",
    "Mask mode": "Mask mode",
    "Inpaint masked": "Inpaint masked",
    "Inpaint not masked": "Inpaint not masked",
    "Masked content": "Masked content",
    "fill": "fill",
    "original": "original",
    "latent noise": "latent noise",
    "latent nothing": "latent nothing",
    "Inpaint area": "Inpaint area",
    "Whole picture": "Whole picture",
    "Only masked": "Only masked",
    "Only masked padding, pixels": "Only masked padding, pixels",
    ("Process images in a directory on the same machine where the server is running. "
     "Leave the output directory empty to save them to the img2img output folder. "
     "Give an inpaint batch mask directory to inpaint: each picture takes the mask of the same name."):
        ("Process images in a directory on the same machine where the server is running. "
         "Leave the output directory empty to save them to the img2img output folder. "
         "Give an inpaint batch mask directory to inpaint: each picture takes the mask of the same name."),
    "Input directory": "Input directory",
    "Output directory": "Output directory",
    "Inpaint batch mask directory (required for inpaint batch processing only)":
        "Inpaint batch mask directory (required for inpaint batch processing only)",
    "PNG info": "PNG info",
    "Append png info to prompts": "Append png info to prompts",
    "Parameters to take from png info": "Parameters to take from png info",
    "Prompts from png info will be appended to prompts set in ui.":
        "Prompts from png info will be appended to prompts set in ui.",
    "CFG scale": "CFG scale",
    "Sampler": "Sampler",
    "Steps": "Steps",
    "Model hash": "Model hash",
    "Send to img2img": "Send to img2img",
    "Send to inpaint": "Send to inpaint",
    "Saved {count} images to {folder}": "Saved {count} images to {folder}",
    # PNG Info
    "Source": "Source",
    "Parameters": "Parameters",
    "Parameter": "Parameter",
    "Value": "Value",
    "Send to txt2img": "Send to txt2img",
    "This image has no generation parameters.": "This image has no generation parameters.",
    "This file is not an image Kiln can read.": "This file is not an image Kiln can read.",
    # Settings
    "SD VAE": "SD VAE",
    "Clip skip": "Clip skip",
    "Maximum number of checkpoints loaded at the same time": "Maximum number of checkpoints loaded at the same time",
    "Live preview method": "Live preview method",
    "Progressbar and preview update period (milliseconds)": "Progressbar and preview update period (milliseconds)",
    "Selected VAE overrides per-model preferences": "Selected VAE overrides per-model preferences",
    "Quicksettings list (settings shown at the top of the page; at the next start)":
        "Quicksettings list (settings shown at the top of the page; at the next start)",
    "Approx cheap": "Approx cheap",
    "Full": "Full",
    "Random number generator source.": "Random number generator source.",
    "Show live previews of the created image": "Show live previews of the created image",
    "Live preview display period (steps; -1 = only at the end)":
        "Live preview display period (steps; -1 = only at the end)",
    "Always save all generated images": "Always save all generated images",
    "Apply settings": "Apply settings",
    "Nothing changed.": "Nothing changed.",
    "settings changed:": "settings changed:",
    "rejected:": "rejected:",
    "Language of the page": "Language of the page",
    "Automatic": "Automatic",
    "None": "None",
    "Follow the browser": "Follow the browser",
    "English": "English",
    "简体中文": "简体中文",
    "Takes effect when the page is reloaded.": "Takes effect when the page is reloaded.",
}

ZH_CN: dict[str, str] = {
    "Stable Diffusion checkpoint": "Stable Diffusion 模型",
    "Refresh": "刷新",
    "No checkpoint found. Put a .safetensors checkpoint into {folder} and press 🔄 next to the checkpoint list.":
        "未找到模型。请将 .safetensors 模型文件放入 {folder}，然后点击模型列表旁的 🔄。",
    "txt2img": "文生图",
    "PNG Info": "PNG 图片信息",
    "Dataset": "数据集",
    "Settings": "设置",
    "Extensions that failed to load (see the Extensions tab):": "加载失败的扩展（详见“扩展”选项卡）：",
    "Prompt": "提示词",
    "Negative prompt": "反向提示词",
    "Generate": "生成",
    "Interrupt": "中止",
    "Skip": "跳过",
    "Sampling method": "采样方法 (Sampler)",
    "Schedule type": "调度类型",
    "Sampling steps": "迭代步数 (Steps)",
    "Width": "宽度",
    "Height": "高度",
    "Batch count": "总批次数",
    "Batch size": "单批数量",
    "CFG Scale": "提示词相关性 (CFG Scale)",
    "Rescale CFG": "CFG 重缩放 (Rescale CFG)",
    "Seed": "随机种子 (Seed)",
    "Random seed": "随机种子",
    "Reuse seed": "重用上次的种子",
    "Extra": "更多",
    "Variation seed": "差异随机种子",
    "Variation strength": "差异强度",
    "Resize seed from width": "从宽度中调整种子",
    "Resize seed from height": "从高度中调整种子",
    "Hires. fix": "高分辨率修复 (Hires. fix)",
    "Upscaler": "放大算法",
    "Hires steps": "高分迭代步数",
    "Denoising strength": "重绘幅度",
    "Upscale by": "放大倍数",
    "Resize width to": "将宽度调整为",
    "Resize height to": "将高度调整为",
    "Hires sampling method": "高分采样方法",
    "Hires schedule type": "高分调度类型",
    "Use same sampler": "使用相同采样器",
    "Use same scheduler": "使用相同调度器",
    "Output": "输出",
    "Live preview": "实时预览",
    "Generation info": "生成信息",
    "Progress": "进度",
    "Queued": "排队中",
    "position": "位置",
    "Step": "步数",
    "ETA": "预计剩余",
    "Done": "完成",
    "Interrupted": "已中止",
    "Error": "错误",
    "Loading checkpoint": "正在加载模型",
    "Could not load": "无法加载",
    "Using": "改用",
    "Paused": "已暂停",
    "Queue": "队列",
    "Job": "任务",
    "Owner": "所有者",
    "Kind": "类型",
    "What": "内容",
    "State": "状态",
    "Position": "位置",
    "Submitted": "提交时间",
    "Running": "运行中",
    "Cancel job": "取消任务",
    "Stop and save": "停止并保存",
    "you": "你",
    "No such job among yours.": "你的任务中没有这个任务。",
    "asked to stop": "已请求停止",
    "already finished": "已经结束",
    "images": "张图像",
    "img2img": "图生图",
    "Inpaint": "局部重绘",
    "Inpaint upload": "上传重绘蒙版",
    "Batch": "批量处理",
    "Image for img2img": "图生图的图像",
    "Image for inpainting with mask": "用于局部重绘并手动画蒙版的图像",
    "Mask": "蒙版",
    "Drop a picture here or click to upload, then paint over what to repaint": "将图像拖放到此处或点击上传，然后用画笔涂抹要重绘的区域",
    "Resize mode": "缩放模式",
    "Just resize": "仅调整大小",
    "Crop and resize": "裁剪后缩放",
    "Resize and fill": "缩放后填充空白",
    "Just resize (latent upscale)": "调整大小（潜空间放大）",
    "Mask blur": "蒙版边缘模糊度",
    "Mask mode": "蒙版模式",
    "Inpaint masked": "重绘蒙版内容",
    "Inpaint not masked": "重绘非蒙版内容",
    "Masked content": "蒙版区域内容处理",
    "fill": "填充",
    "original": "原版",
    "latent noise": "潜空间噪声",
    "latent nothing": "空白潜空间",
    "Inpaint area": "重绘区域",
    "Whole picture": "整张图片",
    "Only masked": "仅蒙版区域",
    "Only masked padding, pixels": "仅蒙版区域下边缘预留像素",
    ("Process images in a directory on the same machine where the server is running. "
     "Leave the output directory empty to save them to the img2img output folder. "
     "Give an inpaint batch mask directory to inpaint: each picture takes the mask of the same name."):
        "处理服务器主机上某一目录里的图像。输出目录留空时，图像保存到图生图的输出文件夹。"
        "填写局部重绘蒙版目录即可批量局部重绘：每张图像使用同名的蒙版。",
    "Input directory": "输入目录",
    "Output directory": "输出目录",
    "Inpaint batch mask directory (required for inpaint batch processing only)":
        "局部重绘蒙版目录（仅限批量局部重绘使用）",
    "PNG info": "PNG 图片信息",
    "Append png info to prompts": "将 PNG 图片信息追加到提示词",
    "Parameters to take from png info": "从 PNG 图片信息中读取的参数",
    "Prompts from png info will be appended to prompts set in ui.": "PNG 图片信息中的提示词会追加到界面中设置的提示词之后。",
    "CFG scale": "提示词相关性",
    "Sampler": "采样方法",
    "Steps": "迭代步数",
    "Model hash": "模型哈希值",
    "Send to img2img": "发送到 图生图",
    "Send to inpaint": "发送到 局部重绘",
    "Saved {count} images to {folder}": "已将 {count} 张图像保存到 {folder}",
    "Source": "来源",
    "Parameters": "参数",
    "Parameter": "参数名",
    "Value": "值",
    "Send to txt2img": "发送到 文生图",
    "This image has no generation parameters.": "该图像没有生成参数。",
    "This file is not an image Kiln can read.": "该文件不是 Kiln 能读取的图像。",
    "SD VAE": "外挂 VAE 模型",
    "Clip skip": "CLIP 终止层数 (Clip skip)",
    "Maximum number of checkpoints loaded at the same time": "最多同时加载的模型数量",
    "Live preview method": "实时预览方式",
    "Progressbar and preview update period (milliseconds)": "进度条和预览图更新周期（毫秒）",
    "Selected VAE overrides per-model preferences": "所选 VAE 优先于模型旁的同名 VAE",
    "Quicksettings list (settings shown at the top of the page; at the next start)":
        "快捷设置列表（显示在页面顶部的设置项；下次启动时生效）",
    "Approx cheap": "快速近似 (Approx cheap)",
    "Full": "完整 VAE 解码 (Full)",
    "Random number generator source.": "随机数生成器来源",
    "Show live previews of the created image": "显示生成过程中的实时预览",
    "Live preview display period (steps; -1 = only at the end)": "实时预览刷新间隔（步数；-1 = 仅在结束时）",
    "Always save all generated images": "始终保存所有生成的图像",
    "Apply settings": "保存设置",
    "Nothing changed.": "没有更改。",
    "settings changed:": "项设置已更改：",
    "rejected:": "被拒绝：",
    "Language of the page": "界面语言",
    "Automatic": "自动",
    "None": "无",
    "Follow the browser": "跟随浏览器",
    "English": "English",
    "简体中文": "简体中文",
    "Takes effect when the page is reloaded.": "重新加载页面后生效。",
}

LOCALES: dict[str, dict[str, str]] = {"en": EN, "zh-CN": ZH_CN}


def make_i18n(extra_tables: Iterable[dict[str, dict[str, str]]] = ()) -> gr.I18n:
    """The translation tables for Gradio; "zh" (a browser set to plain Chinese) maps to zh-CN.

    ``extra_tables``: ``{locale: {key: text}}`` from tabs that keep their own strings.
    """
    merged = {locale: dict(table) for locale, table in LOCALES.items()}
    for tables in extra_tables:
        for locale, table in tables.items():
            merged.setdefault(locale, {}).update(table)
    return gr.I18n(**merged, zh=merged["zh-CN"])


def t(key: str) -> Any:
    """A label Gradio translates in the browser; KeyError if the key has no entry."""
    if key not in EN:
        raise KeyError(f"UI string {key!r} is missing from ui/i18n.py")
    return I18nData(key)


def pick_locale(accept_language: str | None) -> str:
    """The best of our locales for an Accept-Language header ("zh-CN,zh;q=0.9,en;q=0.8")."""
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return "en"


# Where the chosen language comes from (set by ``ui.build``: the ui_language option); None = the browser's.
_language_source: list[Callable[[], str | None]] = [lambda: None]


def set_language_source(source: Callable[[], str | None]) -> None:
    """``source()``: the stored choice ("auto", "en", "zh-CN"), read at each page load and message."""
    _language_source[0] = source


def chosen_locale() -> str | None:
    """The locale Settings fixes for the page, or None to follow the browser ("auto", unknown values)."""
    choice = _language_source[0]()
    return choice if choice in LOCALES else None


def request_locale(request: Any = None) -> str:
    """The language of run-time text for ``request`` (a gr.Request): Settings' choice, else the browser's."""
    chosen = chosen_locale()
    if chosen:
        return chosen
    headers = getattr(request, "headers", None) or {}
    return pick_locale(headers.get("accept-language") if hasattr(headers, "get") else None)


def locale_script(locale: str) -> str:
    """A ``<script>`` for the page's <head>, before Gradio's bundle: Gradio's I18n takes the locale
    from ``navigator.language`` when it starts, so the page shows ``locale`` whatever the browser's."""
    if locale not in LOCALES:
        raise ValueError(f"unknown locale {locale!r}")
    body = ("for (const [k, v] of [['language', l], ['languages', [l]]]) try { "
            "Object.defineProperty(navigator, k, {get: () => v, configurable: true}); } catch (e) {} "
            "window.__kiln_locale__ = l;")
    return f'<script>(() => {{ const l = "{locale}"; {body} }})();</script>'



def translate(key: str, request: Any = None) -> str:
    """Run-time text in the language of the browser that sent ``request`` (a gr.Request), or the
    one Settings chose."""
    if key not in EN:
        raise KeyError(f"UI string {key!r} is missing from ui/i18n.py")
    return LOCALES[request_locale(request)].get(key, EN[key])


LOAD_UPDATE = "_kiln_load_update"


def localize_on_load(component: Any, update: Callable[[Any], Any]) -> Any:
    """Mark a component whose server-built text ``ui.build`` sends again when the page loads, in
    that page's language (``update(request)``: its new value or a gr.update)."""
    setattr(component, LOAD_UPDATE, update)
    return component


def localize_headers(table: Any, keys: Iterable[str], say: Callable[[str, Any], str]) -> Any:
    """An empty gr.Dataframe whose column titles are translated at page load (``say(key, request)``):
    Gradio translates labels in the browser, but not a table's headers."""
    keys = tuple(keys)
    return localize_on_load(table, lambda request: gr.Dataframe(value=[], headers=[say(k, request) for k in keys]))


def localized_on_load(blocks: Iterable[Any]) -> list[Any]:
    """The components ``localize_on_load`` marked among ``blocks``."""
    return [block for block in blocks if hasattr(block, LOAD_UPDATE)]


def load_update(component: Any, request: Any = None) -> Any:
    return getattr(component, LOAD_UPDATE)(request)
