"""The Gradio UI: ``build(engine, queue)`` makes the page; ``page_options()`` its theme, CSS and i18n.

Tabs are thin: widgets and wiring over core functions; everything runs on the shared JobQueue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.i18n import I18nData

from ui.common import (
    CSS,
    KEYBOARD_JS,
    build_checkpoint_row,
    checkpoint_choices,
    error_html,
    job_error_message,
    notice_html,
    progress_html,
    refreshed_checkpoint_choices,
    ui_owner,
    watch_job,
)
from ui.dataset import build_dataset_tab, subtabs
from ui.dataset import i18n_tables as dataset_i18n_tables
from ui.extensions import STRINGS as EXTENSIONS_STRINGS
from ui.extensions import build_extension_tabs, build_extensions_tab, wire_extensions_tab
from ui.extra_networks import build_extra_networks, i18n_tables
from ui.extras import STRINGS as EXTRAS_STRINGS
from ui.extras import build_extras_tab
from ui.i18n import load_update, localized_on_load, make_i18n, set_language_source, t
from ui.img2img import IMG2IMG, INPAINT, build_img2img_tab, wire_gallery_send_to, wire_img2img, wire_send_to
from ui.merger import STRINGS as MERGER_STRINGS
from ui.merger import build_merger_tab
from ui.pnginfo import build_pnginfo_tab, table_update, wire_pnginfo
from ui.queue import build_queue_tab, wire_queue
from ui.quicksettings import build_quicksettings, wire_quicksettings
from ui.settings import build_settings_tab, current_values, vae_choices, wire_settings
from ui.settings_infotext import STRINGS as INFOTEXT_STRINGS
from ui.settings_sampler import STRINGS as SAMPLER_STRINGS
from ui.settings_saving import STRINGS as SAVING_STRINGS
from ui.styles import STRINGS as STYLES_STRINGS
from ui.train import STRINGS as TRAIN_STRINGS
from ui.train import build_train_tab
from ui.train_sheet import STRINGS as SHEET_STRINGS
from ui.txt2img import build_txt2img_tab, wire_txt2img
from ui.xyz import STRINGS as XYZ_STRINGS

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

TITLE = "Kiln"
EXTENSIONS_TITLE = I18nData("Extensions")


def page_options(extra_tables: tuple[dict[str, dict[str, str]], ...] = ()) -> dict[str, Any]:
    """Keyword arguments for ``gr.mount_gradio_app`` / ``launch``: look and translations
    (``extra_tables``: ``{locale: {key: text}}`` of tabs that keep their own strings).

    System fonts only: the default theme pulls fonts from Google, and Kiln makes no outside
    requests (the page must also work on machines without internet).
    """
    theme = gr.themes.Default(
        primary_hue="orange",
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Consolas", "monospace"],
    )
    return {"theme": theme, "css": CSS, "js": KEYBOARD_JS, "i18n": make_i18n((i18n_tables(), dataset_i18n_tables(), EXTRAS_STRINGS,
                                                                     TRAIN_STRINGS, XYZ_STRINGS, SHEET_STRINGS,
                                                                     MERGER_STRINGS, STYLES_STRINGS, SAVING_STRINGS, SAMPLER_STRINGS,
                                                                     INFOTEXT_STRINGS, EXTENSIONS_STRINGS,
                                                                     *extra_tables))}


def build(engine: Engine, queue: JobQueue) -> gr.Blocks:
    # Settings' language choice (config.json ui_language) for the page script and run-time text.
    set_language_source(lambda: engine.settings.options.ui_language)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        top = build_checkpoint_row(engine)
        with gr.Tabs(elem_id="kiln-tabs") as tabs:
            with gr.Tab(t("txt2img"), id="txt2img", elem_id="tab-txt2img"):
                txt2img = build_txt2img_tab(engine)
                extra = build_extra_networks(engine, txt2img.fields["prompt"])
            with gr.Tab(t("img2img"), id="img2img", elem_id="tab-img2img"):
                img2img = build_img2img_tab(engine)
            with gr.Tab(I18nData("Extras"), id="extras", elem_id="tab-extras"):
                build_extras_tab(engine, queue)
            if subtabs():
                with gr.Tab(t("Dataset"), id="dataset", elem_id="tab-dataset"):
                    build_dataset_tab(engine, queue)
            with gr.Tab(I18nData("Train"), id="train", elem_id="tab-train"):
                build_train_tab(engine, queue)
            build_merger_tab(engine, queue, top.dropdown)
            with gr.Tab(t("PNG Info"), id="pnginfo", elem_id="tab-pnginfo"):
                pnginfo = build_pnginfo_tab()
            build_extension_tabs(engine)  # the extensions' own tabs, before Settings as in the WebUI
            with gr.Tab(t("Settings"), id="settings", elem_id="tab-settings"):
                settings = build_settings_tab(engine)
            with gr.Tab(EXTENSIONS_TITLE, id="extensions", elem_id="tab-extensions"):
                extensions_tab = build_extensions_tab(engine)
            with gr.Tab(t("Queue"), id="queue", elem_id="tab-queue"):
                queue_tab = build_queue_tab()
        quick = build_quicksettings(top.row, engine, settings.fields)
        wire_quicksettings(quick, settings.fields, engine)
        clip_skip = settings.fields["CLIP_stop_at_last_layers"]
        wire_txt2img(txt2img, engine, queue, clip_skip=clip_skip,
                     checkpoint_dropdowns=(top.dropdown, settings.fields["sd_model_checkpoint"]),
                     picker_inputs=extra["picker_inputs"])
        wire_img2img(img2img, engine, queue, clip_skip=clip_skip,
                     checkpoint_dropdowns=(top.dropdown, settings.fields["sd_model_checkpoint"]))
        wire_pnginfo(pnginfo, txt2img, tabs, engine, clip_skip=clip_skip)
        # Send to img2img / inpaint: a gallery's selected picture, or PNG Info's, with its settings.
        for source in (txt2img, img2img):
            wire_gallery_send_to(source, img2img, tabs, engine, clip_skip=clip_skip)
        wire_send_to(img2img, tabs, {IMG2IMG: pnginfo.send_img2img, INPAINT: pnginfo.send_inpaint}, [pnginfo.image],
                     lambda path: path, engine, clip_skip=clip_skip)
        wire_settings(settings, engine, top)
        wire_queue(queue_tab, engine, queue)
        wire_extensions_tab(extensions_tab, engine, demo)
        _wire_checkpoint_row(top, engine, queue, (txt2img, img2img), settings, extra["checkpoint_pick"])

        sizes = [tab.fields[name] for tab in (txt2img, img2img) for name in ("width", "height")]
        option_keys = [key for key in settings.fields if key != "sd_model_checkpoint"]
        localized = localized_on_load(demo.blocks.values())  # server-built text: tables' column titles, notes
        rescales = [tab.fields["rescale_cfg"] for tab in (txt2img, img2img)]

        def on_page_load(request: gr.Request):
            # Server-built text follows the browser's language from the first paint, and the
            # checkpoint shown is the current one (the API may have switched it since start-up, or
            # a default that failed to load may have fallen back): sizes and Rescale CFG follow it.
            # Settings shows the stored options (what was applied since the page was built).
            choice = checkpoint_choices(engine)
            size, rescale = engine.native_size(), engine.recommended_rescale_cfg()
            return (notice_html(engine, request), table_update({}, request), choice, choice,
                    *([size] * len(sizes)), *([rescale] * len(rescales)), *(load_update(c, request) for c in localized),
                    *current_values(engine, option_keys), *current_values(engine, list(quick)))

        demo.load(on_page_load, outputs=[top.notice, pnginfo.table, top.dropdown, settings.fields["sd_model_checkpoint"],
                                         *sizes, *rescales, *localized,
                                         *(settings.fields[key] for key in option_keys), *quick.values()],
                  show_progress="hidden")
    return demo


def _wire_checkpoint_row(top, engine: Engine, queue: JobQueue, generation_tabs, settings, checkpoint_pick) -> None:
    """The checkpoint list: load on the queue; every generation tab's size and Rescale CFG follow
    the model (its native size, its recommended rescale); errors show in the first tab's box."""
    first = generation_tabs[0]
    settings_ckpt = settings.fields["sd_model_checkpoint"]
    model_fields = [tab.fields[name] for tab in generation_tabs for name in ("width", "height", "rescale_cfg")]

    def refresh(request: gr.Request):
        update, notice = refreshed_checkpoint_choices(engine, request)
        return update, update, notice, gr.update(choices=vae_choices(engine))

    top.refresh.click(refresh, outputs=[top.dropdown, settings_ckpt, top.notice, settings.fields["sd_vae"]],
                      show_progress="hidden")

    def select(title: str | None, request: gr.Request):
        """Load the choice on the queue like the WebUI does; it is stored once it has loaded.
        A file that fails to load leaves the previous checkpoint loaded and selected."""
        if not title:
            return
        if engine.registry.find_checkpoint(title) is None:
            engine.refresh_models()
        job = queue.submit(lambda _ctx: engine.switch_checkpoint(title), description="load checkpoint",
                           owner=ui_owner(request), kind="load")
        for status in watch_job(queue, job):
            yield {first.progress: progress_html(status, request)}
        message = job_error_message(job)
        if message:
            gr.Warning(message)
        size, rescale = engine.native_size(), engine.recommended_rescale_cfg()
        choice = checkpoint_choices(engine)  # the loaded file's title now carries its hash
        update = {first.error: error_html(message, request), first.progress: "", settings_ckpt: choice,
                  top.dropdown: choice, top.notice: notice_html(engine, request)}
        for tab in generation_tabs:
            update.update({tab.fields["width"]: size, tab.fields["height"]: size, tab.fields["rescale_cfg"]: rescale})
        yield update

    outputs = [first.error, first.progress, *model_fields, settings_ckpt, top.dropdown, top.notice]
    top.dropdown.input(select, inputs=top.dropdown, outputs=outputs, show_progress="minimal")
    # A click on a checkpoint card in the Extra networks panel switches like the dropdown.
    checkpoint_pick.change(select, inputs=checkpoint_pick, outputs=outputs, show_progress="minimal")
