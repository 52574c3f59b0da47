"""The txt2img tab: widgets named by their API fields, wired to the shared JobQueue.

Every parameter widget is registered under its /sdapi/v1/txt2img field name, so turning the
page into ``GenerationParams`` reuses the API's conversion (core.api.convert) and "Send to
txt2img" from PNG Info reuses its infotext mapping (core.api.paste).
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.api.convert import params_from_request
from core.errors import KilnError
from core.sampling.samplers import sampler_names
from core.sampling.schedulers import scheduler_labels
from ui.common import (
    checkpoint_choices,
    error_html,
    infotext_html,
    job_error_message,
    progress_html,
    ui_owner,
    warning_html,
    watch_job,
)
from ui.i18n import t

if TYPE_CHECKING:
    from core.engine import Engine
    from core.generation.params import GeneratedImage
    from core.jobs import JobQueue

DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULER = "Automatic"
USE_SAME_SAMPLER = "Use same sampler"
USE_SAME_SCHEDULER = "Use same scheduler"


# ------------------------------------------------------------------- choice lists --
def upscaler_names(engine: Engine) -> list[str]:
    """Hires upscalers in the WebUI's order: latent modes, plain resamplers, then model files."""
    from core.generation.upscale import IMAGE_RESAMPLERS, LATENT_UPSCALE_MODES

    return [m.name for m in LATENT_UPSCALE_MODES] + list(IMAGE_RESAMPLERS) + engine.upscalers.names()


# --------------------------------------------------------------------------- tab --
@dataclass
class Txt2ImgTab:
    fields: dict[str, Any]  # API field name → component
    prompt_tokens: gr.HTML
    negative_tokens: gr.HTML
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    random_seed: gr.Button
    reuse_seed: gr.Button
    hires_accordion: gr.Accordion
    gallery: gr.Gallery
    infotext: gr.HTML
    progress: gr.HTML
    preview: gr.Image
    error: gr.HTML
    infotexts_state: gr.State
    seeds_state: gr.State
    selected_state: gr.State
    extra: dict[str, Any] = field(default_factory=dict)


def build_txt2img_tab(engine: Engine) -> Txt2ImgTab:
    samplers = sampler_names()
    schedulers = scheduler_labels()
    size = engine.native_size()
    f: dict[str, Any] = {}
    with gr.Row(elem_id="txt2img-prompt-row"):
        with gr.Column(scale=6):
            # The counter sits in the box's top-right corner, as in the WebUI (see CSS .kiln-prompt).
            with gr.Group(elem_classes=["kiln-prompt"]):
                f["prompt"] = gr.Textbox(label=t("Prompt"), lines=3, max_lines=12, elem_id="txt2img-prompt")
                prompt_tokens = gr.HTML("", elem_id="txt2img-token-counter", elem_classes=["kiln-token-counter"])
            with gr.Group(elem_classes=["kiln-prompt"]):
                f["negative_prompt"] = gr.Textbox(label=t("Negative prompt"), lines=2, max_lines=12,
                                                  elem_id="txt2img-negative-prompt")
                negative_tokens = gr.HTML("", elem_id="txt2img-negative-token-counter",
                                          elem_classes=["kiln-token-counter"])
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button(t("Generate"), variant="primary", size="lg", elem_id="txt2img-generate")
            with gr.Row():
                interrupt = gr.Button(t("Interrupt"), elem_id="txt2img-interrupt", min_width=80)
                skip = gr.Button(t("Skip"), elem_id="txt2img-skip", min_width=80)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=380):
            with gr.Row():
                f["sampler_name"] = gr.Dropdown(label=t("Sampling method"), choices=samplers,
                                                value=DEFAULT_SAMPLER if DEFAULT_SAMPLER in samplers else samplers[0],
                                                elem_id="txt2img-sampler")
                f["scheduler"] = gr.Dropdown(label=t("Schedule type"), choices=schedulers,
                                             value=DEFAULT_SCHEDULER if DEFAULT_SCHEDULER in schedulers else schedulers[0],
                                             elem_id="txt2img-scheduler")
            f["steps"] = gr.Slider(1, 150, value=20, step=1, label=t("Sampling steps"), elem_id="txt2img-steps")
            with gr.Accordion(t("Hires. fix"), open=False, elem_id="txt2img-hires") as hires_accordion:
                f["enable_hr"] = gr.Checkbox(label=t("Hires. fix"), value=False, elem_id="txt2img-enable-hr")
                with gr.Row():
                    upscalers = upscaler_names(engine)
                    f["hr_upscaler"] = gr.Dropdown(label=t("Upscaler"), choices=upscalers, value=upscalers[0],
                                                   elem_id="txt2img-hr-upscaler")
                    f["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label=t("Hires steps"))
                    f["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01,
                                                        label=t("Denoising strength"))
                with gr.Row():
                    f["hr_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label=t("Upscale by"))
                    f["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, label=t("Resize width to"))
                    f["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, label=t("Resize height to"))
                with gr.Row():
                    f["hr_sampler_name"] = gr.Dropdown(
                        label=t("Hires sampling method"),
                        choices=[(t(USE_SAME_SAMPLER), USE_SAME_SAMPLER)] + samplers, value=USE_SAME_SAMPLER)
                    f["hr_scheduler"] = gr.Dropdown(
                        label=t("Hires schedule type"),
                        choices=[(t(USE_SAME_SCHEDULER), USE_SAME_SCHEDULER)] + schedulers,
                        value=USE_SAME_SCHEDULER)
            with gr.Row():
                with gr.Column(scale=3):
                    f["width"] = gr.Slider(64, 2048, value=size, step=8, label=t("Width"), elem_id="txt2img-width")
                    f["height"] = gr.Slider(64, 2048, value=size, step=8, label=t("Height"),
                                            elem_id="txt2img-height")
                with gr.Column(scale=2):
                    f["n_iter"] = gr.Slider(1, 100, value=1, step=1, label=t("Batch count"))
                    f["batch_size"] = gr.Slider(1, 8, value=1, step=1, label=t("Batch size"))
            # Forge's layout: Rescale CFG shares the CFG Scale row (its slider has scale=4).
            with gr.Row(elem_id="txt2img-cfg-row"):
                f["cfg_scale"] = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label=t("CFG Scale"), elem_id="txt2img-cfg",
                                           scale=4)
                f["rescale_cfg"] = gr.Slider(0.0, 1.0, value=engine.recommended_rescale_cfg(), step=0.05, label=t("Rescale CFG"),
                                             elem_id="txt2img-rescale-cfg", scale=4)
            with gr.Row(elem_id="txt2img-seed-row"):
                f["seed"] = gr.Number(label=t("Seed"), value=-1, precision=0, elem_id="txt2img-seed", scale=4)
                random_seed = gr.Button("🎲", elem_id="txt2img-random-seed", elem_classes=["kiln-tool-button"],
                                        scale=0, min_width=48)
                reuse_seed = gr.Button("♻️", elem_id="txt2img-reuse-seed", elem_classes=["kiln-tool-button"],
                                       scale=0, min_width=48)
            with gr.Accordion(t("Extra"), open=False, elem_id="txt2img-seed-extra"):
                with gr.Row():
                    f["subseed"] = gr.Number(label=t("Variation seed"), value=-1, precision=0)
                    f["subseed_strength"] = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label=t("Variation strength"))
                with gr.Row():
                    f["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8, label=t("Resize seed from width"))
                    f["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8, label=t("Resize seed from height"))
        with gr.Column(scale=1, min_width=380):
            progress = gr.HTML("", label=t("Progress"), elem_id="txt2img-progress")
            error = gr.HTML("", elem_id="txt2img-error")
            preview = gr.Image(label=t("Live preview"), type="pil", format="png", interactive=False,
                               elem_id="txt2img-preview", height=160, visible=True)
            gallery = gr.Gallery(label=t("Output"), format="png", columns=2, height=480, interactive=False,
                                 elem_id="txt2img-gallery", preview=False)
            infotext = gr.HTML("", label=t("Generation info"), elem_id="txt2img-infotext")
    return Txt2ImgTab(
        fields=f, prompt_tokens=prompt_tokens, negative_tokens=negative_tokens, generate=generate,
        interrupt=interrupt, skip=skip, random_seed=random_seed, reuse_seed=reuse_seed,
        hires_accordion=hires_accordion, gallery=gallery, infotext=infotext, progress=progress,
        preview=preview, error=error, infotexts_state=gr.State([]), seeds_state=gr.State([]),
        selected_state=gr.State(0),
    )


# ----------------------------------------------------------------------- handlers --
def token_counter_html(engine: Engine, text: str, steps: float | None, is_positive: bool = True) -> str:
    """"12/75" for the counter above a prompt box (the WebUI's format)."""
    if not text:
        return ""
    try:
        count, limit = engine.count_tokens(text, int(steps or 20), is_positive=is_positive)
    except KilnError as exc:
        return f'<span title="{html.escape(exc.message)}">?</span>'
    return f"{count}/{limit}"


def image_with_infotext(generated: GeneratedImage) -> Any:
    """A copy of the image carrying its infotext, so the gallery's PNG keeps ``parameters``."""
    image = generated.image.copy()
    image.info["parameters"] = generated.infotext
    return image


def ui_values(tab: Txt2ImgTab, data: dict[Any, Any]) -> dict[str, Any]:
    return {name: data[component] for name, component in tab.fields.items()}


def generate_updates(tab: Txt2ImgTab, engine: Engine, queue: JobQueue, values: dict[str, Any],
                     request: Any = None) -> Iterator[dict[Any, Any]]:
    """The Generate button: queue a txt2img job for ``values`` (API field names) and yield page
    updates (progress, live preview, then gallery + infotext, or the error) until it ends."""
    values = dict(values, save_images=bool(engine.settings.options.samples_save))
    try:
        from core.generation.params import validate

        params = validate(params_from_request(values))
        options = engine.run_options(values.get("override_settings"))
    except KilnError as exc:
        gr.Warning(exc.message)
        yield {tab.error: error_html(exc.message, request), tab.progress: ""}
        return
    job = queue.submit(lambda ctx: engine.txt2img(params, ctx, options), description="txt2img",
                       owner=ui_owner(request), kind="generate", options=options)
    yield {tab.error: "", tab.preview: None}
    shown_preview = -1
    for status in watch_job(queue, job):
        update: dict[Any, Any] = {tab.progress: progress_html(status, request)}
        snap = status.snapshot
        if snap is not None and snap.preview is not None and snap.preview_step != shown_preview:
            shown_preview = snap.preview_step
            update[tab.preview] = snap.preview
        yield update
    message = job_error_message(job)
    if message:
        gr.Warning(message)
        yield {tab.error: error_html(message, request)}
        return
    result = job.result
    if result is None:  # interrupted while still queued
        return
    infotexts = [g.infotext for g in result.images]
    final: dict[Any, Any] = {
        tab.gallery: [image_with_infotext(g) for g in result.images],
        tab.infotext: infotext_html(infotexts[0] if infotexts else ""),
        tab.infotexts_state: infotexts,
        tab.seeds_state: [g.seed for g in result.images],
        tab.selected_state: 0,
    }
    if result.warnings:
        final[tab.error] = warning_html("\n".join(result.warnings))
    yield final


def wire_txt2img(tab: Txt2ImgTab, engine: Engine, queue: JobQueue, clip_skip: Any = None,
                 checkpoint_dropdowns: tuple[Any, ...] = (), picker_inputs: tuple[Any, ...] | list = ()) -> None:
    """Connect the tab's events. ``clip_skip``: the Settings slider, read at Generate time;
    ``checkpoint_dropdowns`` are refreshed after a job (a first load gives the title its hash)."""
    f = tab.fields
    outputs = [tab.gallery, tab.infotext, tab.progress, tab.preview, tab.error, tab.infotexts_state,
               tab.seeds_state, tab.selected_state, *checkpoint_dropdowns]
    inputs = set(f.values()) | ({clip_skip} if clip_skip is not None else set()) | set(picker_inputs)

    def generate(data: dict[Any, Any], request: gr.Request):
        values = ui_values(tab, data)
        if picker_inputs:  # the Additional Networks rows become <lora:name:weight> tags
            from ui.extra_networks import apply_picker

            values["prompt"] = apply_picker(values["prompt"], *(data[c] for c in picker_inputs))
        if clip_skip is not None and data.get(clip_skip):
            values["override_settings"] = {"CLIP_stop_at_last_layers": int(data[clip_skip])}
        yield from generate_updates(tab, engine, queue, values, request)
        if checkpoint_dropdowns:
            choice = checkpoint_choices(engine)
            yield {dropdown: choice for dropdown in checkpoint_dropdowns}

    tab.generate.click(generate, inputs=inputs, outputs=outputs, concurrency_limit=None,
                       show_progress="hidden")

    def interrupt(request: gr.Request) -> None:
        queue.interrupt(owner=ui_owner(request))  # this browser's job only

    def skip(request: gr.Request) -> None:
        queue.skip(owner=ui_owner(request))

    tab.interrupt.click(interrupt, queue=False, show_progress="hidden")
    tab.skip.click(skip, queue=False, show_progress="hidden")

    for box, counter, positive in ((f["prompt"], tab.prompt_tokens, True),
                                   (f["negative_prompt"], tab.negative_tokens, False)):
        box.change(lambda text, steps, positive=positive: token_counter_html(engine, text, steps, positive),
                   inputs=[box, f["steps"]],
                   outputs=counter, trigger_mode="always_last", show_progress="hidden",
                   concurrency_id="token-counter", concurrency_limit=1)

    tab.random_seed.click(lambda: -1, outputs=f["seed"], queue=False, show_progress="hidden")

    def reuse(seeds: list[int], index: int) -> Any:
        if not seeds:
            return gr.skip()
        return seeds[min(max(int(index or 0), 0), len(seeds) - 1)]

    tab.reuse_seed.click(reuse, inputs=[tab.seeds_state, tab.selected_state], outputs=f["seed"], queue=False,
                         show_progress="hidden")

    def select(infotexts: list[str], evt: gr.SelectData):
        index = int(evt.index or 0)
        text = infotexts[index] if 0 <= index < len(infotexts) else ""
        return infotext_html(text), index

    tab.gallery.select(select, inputs=[tab.infotexts_state], outputs=[tab.infotext, tab.selected_state],
                       show_progress="hidden")
    # The WebUI's Hires. fix is an accordion whose open state is the switch; keep both in step.
    tab.hires_accordion.expand(lambda: True, outputs=f["enable_hr"], queue=False, show_progress="hidden")
    tab.hires_accordion.collapse(lambda: False, outputs=f["enable_hr"], queue=False, show_progress="hidden")
