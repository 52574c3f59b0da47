"""The "Script" dropdown of txt2img / img2img, with the X/Y/Z plot's controls (the WebUI's layout).

The widgets become an ``XyzArgs`` (the same object the API's ``script_args`` become), so the
page and ``script_name: "x/y/z plot"`` render the same grid through ``core.xyz``. A grid over the
Settings' cell limit is not refused here as it is in the API: the first Generate says how many
cells it would render and the second one, with the same axes, runs it (the WebUI asks too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.xyz.axes import axis_list
from core.xyz.plan import SCRIPT_TITLE, AxisArgs, XyzArgs
from ui.dataset.strings import Strings

if TYPE_CHECKING:
    from core.engine import Engine

NO_SCRIPT = "None"
AXES = ("x", "y", "z")

ZH = {
    "Script": "脚本",
    NO_SCRIPT: "无",
    SCRIPT_TITLE: "X/Y/Z 图表",
    "X type": "X轴类型", "Y type": "Y轴类型", "Z type": "Z轴类型",
    "X values": "X轴值", "Y values": "Y轴值", "Z values": "Z轴值",
    "Fill in all values of this axis": "填入此轴的全部可选值",
    "Draw legend": "显示图例",
    "Keep -1 for seeds": "保持种子随机 (-1)",
    "Vary seeds for X": "X轴变换种子", "Vary seeds for Y": "Y轴变换种子", "Vary seeds for Z": "Z轴变换种子",
    "Include Sub Images": "包括子图像",
    "Include Sub Grids": "包括子网格",
    "Grid margins (px)": "网格边距 (px)",
    "Use text inputs instead of dropdowns": "使用文本输入代替下拉菜单",
    "Swap X/Y axes": "交换 X/Y 轴", "Swap Y/Z axes": "交换 Y/Z 轴", "Swap X/Z axes": "交换 X/Z 轴",
    "This grid renders {cells} cells ({shape}), over the limit of {limit} set in Settings (xyz_max_cells). "
    "Press Generate again to render it anyway.":
        "此网格将渲染 {cells} 格 ({shape})，超过设置中的上限 {limit} (xyz_max_cells)。再次点击生成即可照常渲染。",
    # the axis types, in the WebUI's Chinese wording
    "Nothing": "无", "Seed": "随机种子 (Seed)", "Var. seed": "差异随机种子", "Var. strength": "差异强度",
    "Steps": "迭代步数", "Hires steps": "高分迭代步数", "CFG Scale": "提示词相关性 (CFG Scale)",
    "Image CFG Scale": "图像引导系数", "Prompt S/R": "提示词搜索/替换 (Prompt S/R)", "Prompt order": "提示词顺序",
    "Sampler": "采样方法", "Hires sampler": "高分采样方法", "Checkpoint name": "模型名称",
    "Sigma Churn": "Sigma Churn", "Sigma min": "Sigma 最小值", "Sigma max": "Sigma 最大值",
    "Sigma noise": "Sigma 噪声", "Schedule type": "调度类型", "Eta": "Eta", "Clip skip": "CLIP 终止层数 (Clip skip)",
    "Denoising": "重绘幅度", "Initial noise multiplier": "初始噪声倍率", "Cond. Image Mask Weight": "条件图像蒙版权重",
    "Hires upscaler": "高分辨率放大算法", "VAE": "VAE", "RNG source": "随机数源", "Size": "尺寸",
    "Rescale CFG": "CFG 重缩放 (Rescale CFG)", "Extra networks multiplier": "额外网络权重倍率", "Styles": "预设样式",
    "Negative Guidance minimum sigma": "负面引导最小 sigma", "Schedule min sigma": "调度器最小 sigma",
    "Schedule max sigma": "调度器最大 sigma", "Schedule rho": "调度器 rho", "Beta schedule alpha": "Beta 调度 alpha",
    "Beta schedule beta": "Beta 调度 beta", "Always discard next-to-last sigma": "始终舍弃倒数第二个 sigma",
    "SGM noise multiplier": "SGM 噪声倍增", "UniPC Order": "UniPC 阶数", "Extra noise": "额外噪声",
}
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
S = Strings(STRINGS)


@dataclass
class AxisControls:
    type: gr.Dropdown
    values: gr.Textbox
    dropdown: gr.Dropdown
    fill: gr.Button


@dataclass
class ScriptControls:
    """The Script dropdown and the X/Y/Z plot's widgets (hidden until it is chosen)."""

    mode: str
    script: gr.Dropdown
    panel: gr.Column
    axes: dict[str, AxisControls]
    options: dict[str, Any]  # XyzArgs field name → checkbox / slider
    swaps: dict[tuple[str, str], gr.Button]
    confirmed: gr.State  # the grid the user was told is over the limit (press again = go)
    inputs: list[Any] = field(default_factory=list)


def axis_title(label: str) -> Any:
    """An axis label as the page shows it: translated, or an extension's label as it gave it."""
    return S.tr(label) if label in STRINGS["en"] else label


def axis_labels(mode: str) -> list[str]:
    """The axes a tab offers: the WebUI's list without those Kiln cannot vary (the API names those)."""
    return [a.label for a in axis_list(mode).supported()]


def build_script_controls(engine: Engine, prefix: str, mode: str) -> ScriptControls:
    labels = axis_labels(mode)
    script = gr.Dropdown(label=S.tr("Script"), choices=[(S.tr(NO_SCRIPT), NO_SCRIPT), (S.tr(SCRIPT_TITLE), SCRIPT_TITLE)],
                         value=NO_SCRIPT, elem_id=f"{prefix}-script")
    axes: dict[str, AxisControls] = {}
    with gr.Column(visible=False, elem_id=f"{prefix}-xyz") as panel:
        for axis, default in zip(AXES, ("Seed", "Nothing", "Nothing")):
            name = axis.upper()
            with gr.Row(elem_id=f"{prefix}-xyz-{axis}-row"):
                kind = gr.Dropdown(label=S.tr(f"{name} type"), choices=[(axis_title(label), label) for label in labels],
                                   value=default, elem_id=f"{prefix}-xyz-{axis}-type", scale=2)
                values = gr.Textbox(label=S.tr(f"{name} values"), lines=1, elem_id=f"{prefix}-xyz-{axis}-values",
                                    scale=5)
                dropdown = gr.Dropdown(label=S.tr(f"{name} values"), multiselect=True, choices=[], visible=False,
                                       elem_id=f"{prefix}-xyz-{axis}-dropdown", scale=5)
                fill = gr.Button("📒", elem_id=f"{prefix}-xyz-{axis}-fill", elem_classes=["kiln-tool-button"],
                                 scale=0, min_width=48, visible=False)
            axes[axis] = AxisControls(kind, values, dropdown, fill)
        options: dict[str, Any] = {}
        with gr.Row(elem_id=f"{prefix}-xyz-options"):
            with gr.Column():
                options["draw_legend"] = gr.Checkbox(label=S.tr("Draw legend"), value=True,
                                                     elem_id=f"{prefix}-xyz-draw-legend")
                options["no_fixed_seeds"] = gr.Checkbox(label=S.tr("Keep -1 for seeds"), value=False,
                                                        elem_id=f"{prefix}-xyz-no-fixed-seeds")
                with gr.Row():
                    for axis in AXES:
                        options[f"vary_seeds_{axis}"] = gr.Checkbox(
                            label=S.tr(f"Vary seeds for {axis.upper()}"), value=False, min_width=80,
                            elem_id=f"{prefix}-xyz-vary-seeds-{axis}")
            with gr.Column():
                options["include_lone_images"] = gr.Checkbox(label=S.tr("Include Sub Images"), value=False,
                                                             elem_id=f"{prefix}-xyz-include-lone-images")
                options["include_sub_grids"] = gr.Checkbox(label=S.tr("Include Sub Grids"), value=False,
                                                           elem_id=f"{prefix}-xyz-include-sub-grids")
                options["csv_mode"] = gr.Checkbox(label=S.tr("Use text inputs instead of dropdowns"), value=False,
                                                  elem_id=f"{prefix}-xyz-csv-mode")
            with gr.Column():
                options["margin_size"] = gr.Slider(0, 500, value=0, step=2, label=S.tr("Grid margins (px)"),
                                                   elem_id=f"{prefix}-xyz-margin-size")
        swaps: dict[tuple[str, str], gr.Button] = {}
        with gr.Row(elem_id=f"{prefix}-xyz-swaps"):
            for a, b in (("x", "y"), ("y", "z"), ("x", "z")):
                swaps[(a, b)] = gr.Button(S.tr(f"Swap {a.upper()}/{b.upper()} axes"), size="sm",
                                          elem_id=f"{prefix}-xyz-swap-{a}{b}")
    controls = ScriptControls(mode, script, panel, axes, options, swaps, gr.State(None))
    controls.inputs = [script, *(c for a in axes.values() for c in (a.type, a.values, a.dropdown)),
                       *options.values(), controls.confirmed]
    return controls


# ----------------------------------------------------------------------- reading --
def xyz_args(controls: ScriptControls, data: dict[Any, Any]) -> XyzArgs | None:
    """The page's X/Y/Z plot as ``XyzArgs`` (the API's object), or None when no script is chosen.
    A list axis shown as a dropdown passes its picks; as text (csv mode) its typed values."""
    if data.get(controls.script) != SCRIPT_TITLE:
        return None
    args = XyzArgs()
    csv_mode = bool(data.get(controls.options["csv_mode"]))
    for axis, c in controls.axes.items():
        kind = data.get(c.type) or "Nothing"
        picks = data.get(c.dropdown) or []
        use_dropdown = _has_choices(controls.mode, kind) and not csv_mode
        setattr(args, axis, AxisArgs(type=kind, values=str(data.get(c.values) or ""),
                                     dropdown=[str(p) for p in picks] if use_dropdown else None))
    for name, component in controls.options.items():
        value = data.get(component)
        setattr(args, name, int(value or 0) if name == "margin_size" else bool(value))
    return args


def signature(args: XyzArgs) -> str:
    """What "the same grid" means for the second press that confirms a big one."""
    from dataclasses import asdict

    return json.dumps(asdict(args), sort_keys=True, default=str)


def over_limit_message(cells: int, shape: tuple[int, int, int], limit: int, request: Any = None) -> str:
    key = ("This grid renders {cells} cells ({shape}), over the limit of {limit} set in Settings (xyz_max_cells). "
           "Press Generate again to render it anyway.")
    return S.say(key, request, cells=cells, shape=" × ".join(map(str, shape)), limit=limit)


def _has_choices(mode: str, label: str) -> bool:
    try:
        return axis_list(mode).find(label).choices is not None
    except ValueError:
        return False


# ---------------------------------------------------------------------- wiring --
def wire_script_controls(controls: ScriptControls, engine: Engine) -> None:
    from core.xyz.job import engine_catalog

    def show(script: str):
        return gr.Column(visible=script == SCRIPT_TITLE)

    controls.script.change(show, inputs=controls.script, outputs=controls.panel, queue=False,
                           show_progress="hidden")
    csv = controls.options["csv_mode"]

    def axis_widgets(kind: str, csv_mode: bool, picks: list[str] | None):
        """A list axis (sampler, checkpoint ...) shows a multiselect of its choices and 📒, unless
        the user asked for text inputs; other axes a text box. Picks the new axis cannot take are
        dropped (a value outside its choices would make the page's next event fail)."""
        axis = axis_list(controls.mode).find(kind or "Nothing")
        listed = axis.choices is not None
        choices = axis.choices(engine_catalog(engine)) if listed else []
        dropdown_shown = listed and not csv_mode
        kept = [p for p in (picks or []) if p in choices]
        return (gr.Textbox(visible=not dropdown_shown),
                gr.Dropdown(choices=choices, value=kept, visible=dropdown_shown), gr.Button(visible=listed))

    for c in controls.axes.values():
        outputs = [c.values, c.dropdown, c.fill]
        inputs = [c.type, csv, c.dropdown]
        c.type.change(axis_widgets, inputs=inputs, outputs=outputs, queue=False, show_progress="hidden")
        csv.change(axis_widgets, inputs=inputs, outputs=outputs, queue=False, show_progress="hidden")

        def fill(kind: str, csv_mode: bool):
            """📒: every value the axis can take (the WebUI's fill button)."""
            axis = axis_list(controls.mode).find(kind or "Nothing")
            if axis.choices is None:
                return gr.Textbox(), gr.Dropdown()
            choices = axis.choices(engine_catalog(engine))
            if csv_mode:
                from core.xyz.values import list_to_csv

                return gr.Textbox(value=list_to_csv(choices)), gr.Dropdown()
            return gr.Textbox(), gr.Dropdown(choices=choices, value=choices)

        c.fill.click(fill, inputs=[c.type, csv], outputs=[c.values, c.dropdown], queue=False, show_progress="hidden")

    for (a, b), button in controls.swaps.items():
        first, second = controls.axes[a], controls.axes[b]
        widgets = [first.type, first.values, first.dropdown, second.type, second.values, second.dropdown]

        def swap(t1, v1, d1, t2, v2, d2):
            # The dropdowns' choices follow the types (their .change), their picks move with them.
            return t2, v2, d2, t1, v1, d1

        button.click(swap, inputs=widgets, outputs=widgets, queue=False, show_progress="hidden")


# -------------------------------------------------------------------- starting --
@dataclass
class XyzStart:
    """What Generate does with an X/Y/Z plot: run ``job`` or, for a grid over the limit not yet
    confirmed, show ``ask`` and remember ``signature`` for the confirming press."""

    job: Any = None
    ask: str = ""
    signature: str | None = None


def start_xyz(engine: Engine, mode: str, args: XyzArgs, params: Any, options: Any, confirmed: str | None,
              request: Any = None) -> XyzStart:
    """The plan checked now (a bad axis or value raises InvalidParameterError before anything
    runs) and the job that renders it, unless the grid is over ``xyz_max_cells`` and this is the
    first press for it."""
    from core.xyz.job import plan_for, run_xyz

    plan = plan_for(engine, mode, args, params, options)
    limit = int(engine.settings.options.xyz_max_cells)
    sig = signature(args)
    if limit and plan.cell_count > limit and confirmed != sig:
        return XyzStart(ask=over_limit_message(plan.cell_count, plan.shape, limit, request), signature=sig)
    return XyzStart(job=lambda ctx: run_xyz(engine, plan, ctx))


def job_for_generate(tab: Any, engine: Engine, mode: str, script: XyzArgs | None, params: Any, options: Any,
                     confirmed: str | None, plain: Any, request: Any = None) -> tuple[Any, str, dict | None]:
    """What Generate queues: ``plain`` (the tab's own run) or the X/Y/Z plot's job, as (job,
    description, None); or (None, "", the page update asking about a grid over the limit)."""
    if script is None:
        return plain, mode, None
    from ui.common import warning_html

    start = start_xyz(engine, mode, script, params, options, confirmed, request)
    if start.job is None:
        return None, "", {tab.error: warning_html(start.ask), tab.progress: "", tab.script.confirmed: start.signature}
    return start.job, f"{mode} x/y/z plot", None
