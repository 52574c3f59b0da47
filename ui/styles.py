"""The Styles dropdown beside the prompt (txt2img, img2img), as in the WebUI: pick styles that
each job adds to its prompts, 📋 writes them into the prompt boxes, 🖌️ opens the style editor
(name, prompts, 📝 copy the prompt boxes in, Save, Delete) over ``styles.csv``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import KilnError
from core.styles import PromptStyle
from ui.dataset.strings import Strings

if TYPE_CHECKING:
    from core.engine import Engine

ZH = {
    "Styles": "预设样式",
    "📋 Apply styles to the prompts": "📋 将所选样式应用到当前提示词",
    "🖌️ Edit styles": "🖌️ 编辑样式",
    "Style": "样式",
    "Style prompt": "样式提示词",
    "Style negative prompt": "样式反向提示词",
    "📝 Copy the prompts into the style": "📝 将当前提示词复制到样式",
    "Save style": "保存样式",
    "Delete style": "删除样式",
    "Saved style {name} to {path}.": "已将样式 {name} 保存到 {path}。",
    "Deleted style {name}.": "已删除样式 {name}。",
    "Give the style a name first.": "请先为样式命名。",
    "Settings are frozen on this server: styles cannot be changed here.": "此服务器的设置已冻结：无法在此更改样式。",
    # No braces in these keys: Gradio's browser-side translation treats them as fields to fill.
    "Type a name and a prompt, then Save; without the prompt placeholder (see the example) a style goes after the prompt.":
        "输入名称和提示词，然后保存；样式中没有提示词占位符（见示例）时，样式会加在提示词之后。",
}
EDITOR_INFO = next(key for key in ZH if key.startswith("Type a name"))
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
S = Strings(STRINGS)


def style_names(engine: Engine) -> list[str]:
    """The styles of styles.csv; none when it cannot be read (the error shows where it matters)."""
    try:
        return engine.styles.names()
    except KilnError:
        return []


@dataclass
class StylesRow:
    dropdown: gr.Dropdown
    apply: gr.Button
    edit: gr.Button


def build_styles_row(engine: Engine, prefix: str) -> StylesRow:
    """The dropdown with 📋 and 🖌️ (built in the column beside the prompt)."""
    with gr.Group(elem_id=f"{prefix}-styles-row"):
        dropdown = gr.Dropdown(label=S.tr("Styles"), choices=style_names(engine), value=[], multiselect=True,
                               elem_id=f"{prefix}-styles")
        with gr.Row():
            apply = gr.Button(S.tr("📋 Apply styles to the prompts"), elem_id=f"{prefix}-styles-apply", size="sm",
                              min_width=80)
            edit = gr.Button(S.tr("🖌️ Edit styles"), elem_id=f"{prefix}-styles-edit", size="sm", min_width=80)
    return StylesRow(dropdown=dropdown, apply=apply, edit=edit)


def materialize(engine: Engine, prompt: str, negative: str, names: list[str]) -> tuple[str, str, list[str]]:
    """📋: the selected styles written into the prompts; the selection emptied (they are in the text now)."""
    names = engine.styles.check("styles", list(names or []))
    return (engine.styles.apply_styles_to_prompt(prompt or "", names),
            engine.styles.apply_negative_styles_to_prompt(negative or "", names), [])


def save_style(engine: Engine, name: str, prompt: str, negative: str, request: Any = None) -> str:
    """Save from the editor; the message to show."""
    if engine.settings.frozen:
        return S.say("Settings are frozen on this server: styles cannot be changed here.", request)
    if not (name or "").strip():
        return S.say("Give the style a name first.", request)
    path = engine.styles.save_style(PromptStyle(name.strip(), prompt or "", negative or ""))
    return S.say("Saved style {name} to {path}.", request, name=name.strip(), path=path)


def delete_style(engine: Engine, name: str, request: Any = None) -> str:
    if engine.settings.frozen:
        return S.say("Settings are frozen on this server: styles cannot be changed here.", request)
    engine.styles.delete_style(name)
    return S.say("Deleted style {name}.", request, name=name)


def build_styles_editor(engine: Engine, prefix: str, row: StylesRow, prompt: gr.Textbox,
                        negative: gr.Textbox) -> None:
    """The editor (hidden until 🖌️), and every event of the row."""
    with gr.Group(visible=False, elem_id=f"{prefix}-styles-editor") as editor:
        name = gr.Dropdown(label=S.tr("Style"), choices=style_names(engine), value=None, allow_custom_value=True,
                           elem_id=f"{prefix}-style-name")
        style_prompt = gr.Textbox(label=S.tr("Style prompt"), lines=2, elem_id=f"{prefix}-style-prompt",
                                  placeholder="masterpiece, {prompt}, film grain",  # an example, as in the WebUI
                                  info=S.tr(EDITOR_INFO))
        style_negative = gr.Textbox(label=S.tr("Style negative prompt"), lines=2, elem_id=f"{prefix}-style-negative")
        with gr.Row():
            copy = gr.Button(S.tr("📝 Copy the prompts into the style"), elem_id=f"{prefix}-style-copy")
            save = gr.Button(S.tr("Save style"), variant="primary", elem_id=f"{prefix}-style-save")
            delete = gr.Button(S.tr("Delete style"), variant="stop", elem_id=f"{prefix}-style-delete")
        status = gr.Markdown("", elem_id=f"{prefix}-style-status")
    shown = gr.State(False)

    def refreshed() -> dict[str, Any]:
        return gr.update(choices=style_names(engine))

    def on_apply(p: str, n: str, names: list[str]):
        try:
            return materialize(engine, p, n, names)
        except KilnError as exc:
            gr.Warning(exc.message)
            return gr.skip(), gr.skip(), gr.skip()

    row.apply.click(on_apply, inputs=[prompt, negative, row.dropdown], outputs=[prompt, negative, row.dropdown],
                    show_progress="hidden")
    # A hand edit of styles.csv (or a save in the other tab) shows the next time the list opens.
    row.dropdown.focus(refreshed, outputs=row.dropdown, show_progress="hidden")
    name.focus(refreshed, outputs=name, show_progress="hidden")
    row.edit.click(lambda visible: (not visible, gr.Group(visible=not visible)), inputs=shown,
                   outputs=[shown, editor], show_progress="hidden")

    def pick(style_name: str | None):
        style = engine.styles.get(style_name) if style_name else None
        if style is None:
            return gr.skip(), gr.skip()
        return style.prompt, style.negative_prompt

    name.input(pick, inputs=name, outputs=[style_prompt, style_negative], show_progress="hidden")
    name.select(pick, inputs=name, outputs=[style_prompt, style_negative], show_progress="hidden")
    copy.click(lambda p, n: (p, n), inputs=[prompt, negative], outputs=[style_prompt, style_negative],
               show_progress="hidden")

    def on_save(style_name: str | None, p: str, n: str, request: gr.Request):
        try:
            message = save_style(engine, style_name or "", p, n, request)
        except KilnError as exc:
            message = exc.message
        return message, refreshed(), refreshed()

    def on_delete(style_name: str | None, request: gr.Request):
        try:
            message = delete_style(engine, style_name or "", request)
        except KilnError as exc:
            message = exc.message
        return message, refreshed(), refreshed()

    save.click(on_save, inputs=[name, style_prompt, style_negative], outputs=[status, name, row.dropdown],
               show_progress="hidden")
    delete.click(on_delete, inputs=name, outputs=[status, name, row.dropdown], show_progress="hidden")
