"""PNG Info: read the ``parameters`` text of a dropped image, show it parsed, send it to txt2img,
img2img or inpaint (the last two are wired by ui/img2img.py's ``wire_send_to``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.api.paste import fields_from_infotext
from core.sampling.samplers import split_sampler_name
from ui.i18n import t, translate
from ui.txt2img import (
    USE_SAME_SAMPLER,
    USE_SAME_SCHEDULER,
    Txt2ImgTab,
    sampler_names,
    scheduler_labels,
    upscaler_names,
)

if TYPE_CHECKING:
    from core.engine import Engine


@dataclass
class PngInfoTab:
    image: gr.Image
    parameters: gr.Textbox
    table: gr.Dataframe
    send: gr.Button
    send_img2img: gr.Button
    send_inpaint: gr.Button
    parsed_state: gr.State


def build_pnginfo_tab() -> PngInfoTab:
    with gr.Row(equal_height=False):
        with gr.Column():
            # filepath + image_mode=None: Gradio hands over the uploaded file untouched, text chunks included.
            image = gr.Image(label=t("Source"), type="filepath", image_mode=None, sources=["upload", "clipboard"],
                             elem_id="pnginfo-image", height=420)
        with gr.Column():
            parameters = gr.Textbox(label=t("Parameters"), lines=6, interactive=False, elem_id="pnginfo-parameters")
            with gr.Row():
                send = gr.Button(t("Send to txt2img"), elem_id="pnginfo-send-to-txt2img", variant="primary")
                send_img2img = gr.Button(t("Send to img2img"), elem_id="pnginfo-send-to-img2img", variant="primary")
                send_inpaint = gr.Button(t("Send to inpaint"), elem_id="pnginfo-send-to-inpaint", variant="primary")
            # Dataframe headers are plain text (no browser-side i18n): set per request, see table_update.
            table = gr.Dataframe(headers=["Parameter", "Value"], value=[], interactive=False,
                                 elem_id="pnginfo-table", wrap=True)
    return PngInfoTab(image=image, parameters=parameters, table=table, send=send, send_img2img=send_img2img,
                      send_inpaint=send_inpaint, parsed_state=gr.State({}))


def read_image_parameters(path: str | None, engine: Engine | None = None) -> tuple[str | None, dict[str, Any]]:
    """(the ``parameters`` text or None, its parsed form) for an image file; with ``engine``, the
    styles of its styles.csv are found in the prompts (``Styles array``, the infotext_styles option)."""
    if not path:
        return None, {}
    from core.generation.infotext import parse_generation_parameters, read_png_infotext

    text = read_png_infotext(path)  # a text-chunk bomb: InfotextTooLarge with the reason
    if not text:
        return None, {}
    if engine is None:
        return text, parse_generation_parameters(text)
    return text, parse_generation_parameters(text, styles=engine.styles,
                                             infotext_styles=engine.settings.options.infotext_styles)


def table_rows(parsed: dict[str, Any]) -> list[list[str]]:
    return [[str(key), str(value)] for key, value in parsed.items()]


def table_update(parsed: dict[str, Any], request: Any = None) -> gr.Dataframe:
    return gr.Dataframe(value=table_rows(parsed),
                        headers=[translate("Parameter", request), translate("Value", request)])


def dropdown_choices(engine: Engine) -> dict[str, list[str]]:
    """Dropdown field name → its choices, for ``txt2img_values``."""
    samplers = sampler_names()
    schedulers = scheduler_labels()
    return {
        "sampler_name": samplers,
        "scheduler": schedulers,
        "hr_upscaler": upscaler_names(engine),
        "hr_sampler_name": [USE_SAME_SAMPLER] + samplers,
        "hr_scheduler": [USE_SAME_SCHEDULER] + schedulers,
    }


def txt2img_values(parsed: dict[str, Any], choices: dict[str, list[str]]) -> dict[str, Any]:
    """txt2img field values (API names) for a parsed infotext; values a dropdown can't show are left out.

    ``choices``: dropdown field name → its choices. Clip skip comes back as ``clip_skip``.
    """
    values = fields_from_infotext(parsed)
    samplers = choices.get("sampler_name", [])
    if "sampler_name" in values:
        # Names and aliases resolve and "DPM++ 2M Karras" splits in two, as the WebUI's paste does;
        # unlike it, a sampler's own default schedule stays as written instead of "Automatic".
        sampler, scheduler = split_sampler_name(values["sampler_name"], values.get("scheduler"),
                                                convert_automatic=False)
        if sampler not in samplers:
            values.pop("sampler_name")
        else:
            values["sampler_name"], values["scheduler"] = sampler, scheduler
    if values.get("hr_sampler_name") is None:
        values["hr_sampler_name"] = USE_SAME_SAMPLER
    if values.get("hr_scheduler") is None:
        values["hr_scheduler"] = USE_SAME_SCHEDULER
    for name, options in choices.items():
        if name in values and values[name] not in options:
            values.pop(name)
    return values


def image_outputs(path: str | None, request: Any = None, engine: Engine | None = None
                  ) -> tuple[str, Any, dict[str, Any]]:
    """(parameters text or a message, the table, the parsed fields) for the picture dropped in."""
    from core.errors import KilnError

    try:
        text, parsed = read_image_parameters(path, engine)
    except KilnError as exc:  # parameters too large to parse: say so, keep the page working
        return exc.message, table_update({}, request), {}
    except (OSError, ValueError) as exc:  # not a picture Pillow reads
        return f"{translate('This file is not an image Kiln can read.', request)} ({exc})", \
            table_update({}, request), {}
    if path and text is None:
        return translate("This image has no generation parameters.", request), table_update({}, request), {}
    return text or "", table_update(parsed, request), parsed


def wire_pnginfo(tab: PngInfoTab, txt2img: Txt2ImgTab, tabs: gr.Tabs, engine: Engine, clip_skip: Any = None) -> None:
    def on_image(path: str | None, request: gr.Request):
        return image_outputs(path, request, engine)

    tab.image.change(on_image, inputs=tab.image, outputs=[tab.parameters, tab.table, tab.parsed_state],
                     show_progress="hidden")

    f = txt2img.fields
    choices = dropdown_choices(engine)
    outputs = list(f.values()) + [txt2img.hires_accordion, tabs] + ([clip_skip] if clip_skip is not None else [])

    def send(parsed: dict[str, Any]):
        if not parsed:
            return {tabs: gr.Tabs(selected="txt2img")}
        values = txt2img_values(parsed, choices)
        update: dict[Any, Any] = {f[name]: value for name, value in values.items() if name in f}
        if "styles" in values and "styles" in f:  # the list may be newer than the page's choices
            from ui.styles import style_names

            update[f["styles"]] = gr.Dropdown(choices=style_names(engine), value=values["styles"])
        update[txt2img.hires_accordion] = gr.Accordion(open=bool(values.get("enable_hr")))
        if clip_skip is not None and "clip_skip" in values:
            update[clip_skip] = values["clip_skip"]
        update[tabs] = gr.Tabs(selected="txt2img")
        return update

    tab.send.click(send, inputs=tab.parsed_state, outputs=outputs, show_progress="hidden")
