"""Extensions on the page: their tabs, their always-on accordions on txt2img / img2img, and the
Extensions tab (扩展) that lists what loaded, what failed and why, and switches them on or off
for the next start.

An extension's tab or accordion that raises while it is built shows the error in its place and
is reported on the Extensions tab; the rest of the page is built as usual.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import KilnError
from core.extensions.registry import DISABLED, FAILED, LOADED, NOT_RUN
from core.settings import DISABLE_EXTENSIONS_CHOICES
from ui.dataset.strings import Strings

if TYPE_CHECKING:
    from core.engine import Engine
    from core.extensions.api import ScriptEntry

STATE_TITLES = {LOADED: "Enabled", FAILED: "Failed to load", DISABLED: "Disabled", NOT_RUN: "Not run"}
HELP = ("Each extension is a folder in extensions/ with a kiln_extension.py (README, section Extensions). "
        "WebUI extensions import the WebUI's own modules and cannot run in Kiln. "
        "Changes here take effect at the next start.")

# The WebUI's 简体中文 wording (扩展, 已安装, 启用, 禁用所有扩展...).
STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "Extensions": "Extensions",
        "Installed": "Installed",
        "Extension": "Extension",
        "State": "State",
        "Adds": "Adds",
        "Details": "Details",
        "Enabled": "Enabled",
        "Failed to load": "Failed to load",
        "Disabled": "Disabled",
        "Not run": "Not run",
        "Load time": "Load time",
        "The extensions folder is empty.": "The extensions folder is empty.",
        "Enable": "Enable",
        "Disable all extensions": "Disable all extensions",
        "none": "none",
        "extra": "extra",
        "all": "all",
        "Apply (at the next start)": "Apply (at the next start)",
        "Saved. Restart Kiln to load the extensions as chosen.":
            "Saved. Restart Kiln to load the extensions as chosen.",
        "Nothing changed.": "Nothing changed.",
        "This part of the extension failed to build:": "This part of the extension failed to build:",
        HELP: HELP,
    },
    "zh-CN": {
        "Extensions": "扩展",
        "Installed": "已安装",
        "Extension": "扩展",
        "State": "状态",
        "Adds": "提供的功能",
        "Details": "详情",
        "Enabled": "已启用",
        "Failed to load": "加载失败",
        "Disabled": "已禁用",
        "Not run": "未运行",
        "Load time": "加载耗时",
        "The extensions folder is empty.": "扩展文件夹是空的。",
        "Enable": "启用",
        "Disable all extensions": "禁用所有扩展",
        "none": "无",
        "extra": "仅额外扩展",
        "all": "全部",
        "Apply (at the next start)": "应用（下次启动时生效）",
        "Saved. Restart Kiln to load the extensions as chosen.": "已保存。重启 Kiln 后按所选加载扩展。",
        "Nothing changed.": "没有更改。",
        "This part of the extension failed to build:": "扩展的这一部分构建失败：",
        HELP: "每个扩展都是 extensions/ 中带有 kiln_extension.py 的文件夹（见 README 的 Extensions 一节）。"
              "WebUI 扩展会导入 WebUI 自身的模块，无法在 Kiln 中运行。此处的更改在下次启动时生效。",
    },
}
S = Strings(STRINGS)


# ------------------------------------------------------------ extensions' own parts --
@dataclass
class ExtensionScript:
    """An always-on script's accordion on one tab and the inputs ``process`` receives."""

    entry: ScriptEntry
    inputs: list[Any]


def _show_failure(exc: BaseException) -> None:
    gr.Markdown(S.tr("This part of the extension failed to build:"))
    gr.HTML(f'<div class="kiln-error">{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</div>')


def build_extension_tabs(engine: Engine) -> None:
    """One top-level tab per tab an extension added (call inside the page's gr.Tabs)."""
    for index, entry in enumerate(engine.extensions.tabs):
        with gr.Tab(entry.title, id=f"ext-{index}", elem_id=f"tab-ext-{entry.extension}-{index}"):
            try:
                entry.build()
            except Exception as exc:  # the extension's code: shown in its tab, the page goes on
                engine.extensions.report_problem(entry.extension, f"tab {entry.title!r}: {type(exc).__name__}: {exc}")
                _show_failure(exc)


def build_script_accordions(engine: Engine, mode: str) -> list[ExtensionScript]:
    """The always-on accordions of ``mode`` (txt2img / img2img), closed, in load order."""
    scripts = []
    for entry in engine.extensions.scripts_for(mode):
        with gr.Accordion(entry.title, open=False, elem_id=f"{mode}-ext-script-{entry.extension}"):
            try:
                inputs = entry.build()
                if not isinstance(inputs, Sequence) or not all(isinstance(c, gr.components.Component)
                                                                 for c in inputs):
                    raise TypeError("build_fn must return a list of Gradio components (the inputs of process_fn)")
            except Exception as exc:
                engine.extensions.report_problem(entry.extension,
                                                 f"script {entry.title!r} on {mode}: {type(exc).__name__}: {exc}")
                _show_failure(exc)
                continue
        scripts.append(ExtensionScript(entry, list(inputs)))
    return scripts


def script_inputs(scripts: list[ExtensionScript]) -> set[Any]:
    return {component for script in scripts for component in script.inputs}


def alwayson_values(scripts: list[ExtensionScript], data: dict[Any, Any]) -> dict[str, Any]:
    """The accordions' values in the API's ``alwayson_scripts`` shape, so the page and the API
    run the scripts through the same code (core.extensions.registry.apply_scripts)."""
    return {s.entry.title: {"args": [data[c] for c in s.inputs]} for s in scripts}


# ------------------------------------------------------------------ Extensions tab --
@dataclass
class ExtensionsTab:
    table: gr.HTML
    enabled: gr.CheckboxGroup
    disable_all: gr.Radio
    apply: gr.Button
    result: gr.Markdown


def table_html(engine: Engine, request: Any = None) -> str:
    """Every folder of extensions/ with its state, what it adds and, for a broken one, why."""
    records = engine.extensions.records
    if not records:
        return f"<p>{html.escape(S.say('The extensions folder is empty.', request))}</p>"
    head = "".join(f"<th>{html.escape(S.say(key, request))}</th>"
                   for key in ("Extension", "State", "Adds", "Load time", "Details"))
    rows = []
    for r in records:
        details = "<br>".join(html.escape(text) for text in [r.message, *r.problems] if text)
        css = "kiln-error" if r.state == FAILED or r.problems else ""
        seconds = f"{r.seconds * 1000:.0f} ms" if r.state in (LOADED, FAILED) else ""
        rows.append(f'<tr class="{css}"><td>{html.escape(r.name)}</td>'
                    f"<td>{html.escape(S.say(STATE_TITLES[r.state], request))}</td>"
                    f"<td>{'<br>'.join(html.escape(a) for a in r.adds)}</td><td>{seconds}</td><td>{details}</td></tr>")
    return (f'<table class="kiln-extensions"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def kiln_extension_names(engine: Engine) -> list[str]:
    """The folders that can be switched on or off (those with Kiln's entry point)."""
    return [r.name for r in engine.extensions.records if r.state != NOT_RUN]


def build_extensions_tab(engine: Engine) -> ExtensionsTab:
    options = engine.settings.options
    names = kiln_extension_names(engine)
    with gr.Column(elem_id="extensions-column"):
        gr.Markdown(S.tr(HELP), elem_id="extensions-help")
        gr.Markdown(S.tr("Installed"), elem_id="extensions-installed")
        table = gr.HTML(table_html(engine), elem_id="extensions-table")
        enabled = gr.CheckboxGroup(label=S.tr("Enable"), choices=names,
                                   value=[n for n in names if n not in options.disabled_extensions],
                                   elem_id="extensions-enabled")
        disable_all = gr.Radio(label=S.tr("Disable all extensions"),
                               choices=[(S.tr(c), c) for c in DISABLE_EXTENSIONS_CHOICES],
                               value=options.disable_all_extensions, elem_id="extensions-disable-all")
        apply = gr.Button(S.tr("Apply (at the next start)"), variant="primary", elem_id="extensions-apply")
        result = gr.Markdown("", elem_id="extensions-result")
    return ExtensionsTab(table, enabled, disable_all, apply, result)


def apply_choice(engine: Engine, enabled: list[str], disable_all: str, request: Any = None) -> str:
    """Store the choice in the WebUI's settings (disabled_extensions keeps names of folders that
    are not here now, as the WebUI does); the message for the page."""
    names = kiln_extension_names(engine)
    kept = [n for n in engine.settings.options.disabled_extensions if n not in names]
    disabled = kept + [n for n in names if n not in (enabled or [])]
    try:
        changed = engine.settings.apply_user_changes({"disabled_extensions": disabled,
                                                      "disable_all_extensions": disable_all})
    except KilnError as exc:
        return exc.message
    key = "Saved. Restart Kiln to load the extensions as chosen." if changed else "Nothing changed."
    return S.say(key, request)


def wire_extensions_tab(tab: ExtensionsTab, engine: Engine, demo: gr.Blocks) -> None:
    def apply(enabled: list[str], disable_all: str, request: gr.Request) -> str:
        return apply_choice(engine, enabled, disable_all, request)

    tab.apply.click(apply, inputs=[tab.enabled, tab.disable_all], outputs=tab.result, show_progress="hidden")
    def table(request: gr.Request) -> str:
        return table_html(engine, request)

    # In the browser's language, and with the problems the page's own build found.
    demo.load(table, outputs=tab.table, show_progress="hidden")
