"""The txt2img tab: widgets named by their API fields, wired to the shared JobQueue.

Every parameter widget is registered under its /sdapi/v1/txt2img field name, so turning the
page into ``GenerationParams`` reuses the API's conversion (core.api.convert) and "Send to
txt2img" from PNG Info reuses its infotext mapping (core.api.paste).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.api.convert import params_from_request
from core.errors import KilnError
from core.sampling.samplers import sampler_names
from core.sampling.schedulers import scheduler_labels
from ui.common import (
    GenerationTab,
    build_output_column,
    build_prompt_row,
    checkpoint_choices,
    error_html,
    gallery_updates,
    image_with_infotext,
    submit_generation,
    warning_html,
    wire_generation_controls,
)
from ui.extensions import ExtensionScript, alwayson_values, build_script_accordions, script_inputs
from ui.i18n import t
from ui.styles import build_styles_editor, build_styles_row
from ui.xyz import ScriptControls, build_script_controls, job_for_generate, wire_script_controls, xyz_args

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.xyz.plan import XyzArgs

DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULER = "Automatic"
USE_SAME_SAMPLER = "Use same sampler"
USE_SAME_SCHEDULER = "Use same scheduler"


def scheduler_choices(labels: list[str]) -> list[Any]:
    """The Schedule type list: "Automatic" translated (the value stays "Automatic"), the schedules' names as they are."""
    return [(t(label), label) if label == DEFAULT_SCHEDULER else label for label in labels]


# ------------------------------------------------------------------- choice lists --
def upscaler_names(engine: Engine) -> list[str]:
    """Hires upscalers in the WebUI's order: latent modes, plain resamplers, then model files."""
    from core.generation.upscale import IMAGE_RESAMPLERS, LATENT_UPSCALE_MODES

    return [m.name for m in LATENT_UPSCALE_MODES] + list(IMAGE_RESAMPLERS) + engine.upscalers.names()


# ------------------------------------------------------------ shared parameters --
# Widgets both generation tabs show, each registered in ``f`` under its API field name, with
# elem_ids "<prefix>-sampler", "<prefix>-steps", ... ("txt2img-sampler", "img2img-sampler").
def build_sampler_controls(f: dict[str, Any], prefix: str) -> None:
    samplers = sampler_names()
    schedulers = scheduler_labels()
    with gr.Row():
        f["sampler_name"] = gr.Dropdown(label=t("Sampling method"), choices=samplers,
                                        value=DEFAULT_SAMPLER if DEFAULT_SAMPLER in samplers else samplers[0],
                                        elem_id=f"{prefix}-sampler")
        f["scheduler"] = gr.Dropdown(label=t("Schedule type"), choices=scheduler_choices(schedulers),
                                     value=DEFAULT_SCHEDULER if DEFAULT_SCHEDULER in schedulers else schedulers[0],
                                     elem_id=f"{prefix}-scheduler")
    f["steps"] = gr.Slider(1, 150, value=20, step=1, label=t("Sampling steps"), elem_id=f"{prefix}-steps")


def build_size_controls(f: dict[str, Any], prefix: str, size: int) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            f["width"] = gr.Slider(64, 2048, value=size, step=8, label=t("Width"), elem_id=f"{prefix}-width")
            f["height"] = gr.Slider(64, 2048, value=size, step=8, label=t("Height"), elem_id=f"{prefix}-height")
        with gr.Column(scale=2):
            f["n_iter"] = gr.Slider(1, 100, value=1, step=1, label=t("Batch count"), elem_id=f"{prefix}-batch-count")
            f["batch_size"] = gr.Slider(1, 8, value=1, step=1, label=t("Batch size"), elem_id=f"{prefix}-batch-size")


def build_cfg_row(f: dict[str, Any], prefix: str, engine: Engine) -> None:
    # Forge's layout: Rescale CFG shares the CFG Scale row (its slider has scale=4).
    with gr.Row(elem_id=f"{prefix}-cfg-row"):
        f["cfg_scale"] = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label=t("CFG Scale"), elem_id=f"{prefix}-cfg",
                                   scale=4)
        f["rescale_cfg"] = gr.Slider(0.0, 1.0, value=engine.recommended_rescale_cfg(), step=0.05,
                                     label=t("Rescale CFG"), elem_id=f"{prefix}-rescale-cfg", scale=4)


def build_seed_controls(f: dict[str, Any], prefix: str) -> tuple[gr.Button, gr.Button]:
    """Seed with 🎲 / ♻️, and the Extra accordion (variation seed, resize seed from); the two buttons."""
    with gr.Row(elem_id=f"{prefix}-seed-row"):
        f["seed"] = gr.Number(label=t("Seed"), value=-1, precision=0, elem_id=f"{prefix}-seed", scale=4)
        random_seed = gr.Button("🎲", elem_id=f"{prefix}-random-seed", elem_classes=["kiln-tool-button"],
                                scale=0, min_width=48)
        reuse_seed = gr.Button("♻️", elem_id=f"{prefix}-reuse-seed", elem_classes=["kiln-tool-button"],
                               scale=0, min_width=48)
    with gr.Accordion(t("Extra"), open=False, elem_id=f"{prefix}-seed-extra"):
        with gr.Row():
            f["subseed"] = gr.Number(label=t("Variation seed"), value=-1, precision=0)
            f["subseed_strength"] = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label=t("Variation strength"))
        with gr.Row():
            f["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8, label=t("Resize seed from width"))
            f["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8, label=t("Resize seed from height"))
    return random_seed, reuse_seed


# --------------------------------------------------------------------------- tab --
@dataclass
class Txt2ImgTab(GenerationTab):
    hires_accordion: gr.Accordion
    extra: dict[str, Any] = field(default_factory=dict)
    script: ScriptControls | None = None  # the Script dropdown (X/Y/Z plot)
    ext_scripts: list[ExtensionScript] = field(default_factory=list)  # extensions' always-on accordions


def build_txt2img_tab(engine: Engine) -> Txt2ImgTab:
    samplers = sampler_names()
    schedulers = scheduler_labels()
    prompt_row = build_prompt_row("txt2img", beside=lambda: build_styles_row(engine, "txt2img"))
    f: dict[str, Any] = prompt_row.pop("fields")
    styles = prompt_row.pop("beside")
    f["styles"] = styles.dropdown  # the API's styles field
    build_styles_editor(engine, "txt2img", styles, f["prompt"], f["negative_prompt"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=380):
            build_sampler_controls(f, "txt2img")
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
                        choices=[(t(USE_SAME_SCHEDULER), USE_SAME_SCHEDULER)] + scheduler_choices(schedulers),
                        value=USE_SAME_SCHEDULER)
            build_size_controls(f, "txt2img", engine.native_size())
            build_cfg_row(f, "txt2img", engine)
            random_seed, reuse_seed = build_seed_controls(f, "txt2img")
            ext_scripts = build_script_accordions(engine, "txt2img")  # above Script, as in the WebUI
            script = build_script_controls(engine, "txt2img", "txt2img")
        with gr.Column(scale=1, min_width=380):
            outputs = build_output_column("txt2img")
    return Txt2ImgTab(fields=f, **prompt_row, random_seed=random_seed, reuse_seed=reuse_seed,
                      hires_accordion=hires_accordion, script=script, ext_scripts=ext_scripts, **outputs)


# ----------------------------------------------------------------------- handlers --
def ui_values(tab: GenerationTab, data: dict[Any, Any]) -> dict[str, Any]:
    return {name: data[component] for name, component in tab.fields.items()}


def settings_overrides(values: dict[str, Any], data: dict[Any, Any], clip_skip: Any) -> dict[str, Any]:
    """``values`` with the Settings tab's Clip skip as this job's override (read at Generate time)."""
    if clip_skip is not None and data.get(clip_skip):
        values["override_settings"] = {"CLIP_stop_at_last_layers": int(data[clip_skip])}
    return values


def generate_updates(tab: Txt2ImgTab, engine: Engine, queue: JobQueue, values: dict[str, Any],
                     request: Any = None, script: XyzArgs | None = None,
                     confirmed: str | None = None) -> Iterator[dict[Any, Any]]:
    """The Generate button: queue a txt2img job for ``values`` (API field names) and yield page
    updates (progress, live preview, then gallery + infotext, or the error) until it ends.
    ``script``: the X/Y/Z plot's arguments when the Script dropdown chose it (``confirmed``: the
    over-the-limit grid the user already pressed Generate for once)."""
    values = dict(values, save_images=bool(engine.settings.options.samples_save))
    try:
        from core.generation.params import validate

        params = validate(params_from_request(values, scripts=engine.extensions))
        options = engine.run_options(values.get("override_settings"))
        fn, description, ask = job_for_generate(tab, engine, "txt2img", script, params, options, confirmed,
                                                 lambda ctx: engine.txt2img(params, ctx, options), request)
        if ask is not None:
            yield ask
            return
    except KilnError as exc:
        gr.Warning(exc.message)
        yield {tab.error: error_html(exc.message, request), tab.progress: ""}
        return
    job = yield from submit_generation(tab, queue, fn, description, options, request)
    if script is not None:
        yield {tab.script.confirmed: None}  # a later big grid asks again
    yield from result_updates(tab, job)


def result_updates(tab: GenerationTab, job: Any) -> Iterator[dict[Any, Any]]:
    """The gallery for a finished txt2img / img2img job (nothing if it failed or never ran)."""
    result = job.result
    if result is None:  # failed, or interrupted while still queued
        return
    yield gallery_updates(tab, [image_with_infotext(g) for g in result.images], [g.infotext for g in result.images],
                          [g.seed for g in result.images], warning_html("\n".join(result.warnings)))


def wire_txt2img(tab: Txt2ImgTab, engine: Engine, queue: JobQueue, clip_skip: Any = None,
                 checkpoint_dropdowns: tuple[Any, ...] = (), picker_inputs: tuple[Any, ...] | list = ()) -> None:
    """Connect the tab's events. ``clip_skip``: the Settings slider, read at Generate time;
    ``checkpoint_dropdowns`` are refreshed after a job (a first load gives the title its hash)."""
    f = tab.fields
    outputs = [tab.gallery, tab.infotext, tab.progress, tab.preview, tab.error, tab.infotexts_state,
               tab.seeds_state, tab.selected_state, tab.script.confirmed, *checkpoint_dropdowns]
    inputs = (set(f.values()) | ({clip_skip} if clip_skip is not None else set()) | set(picker_inputs)
              | set(tab.script.inputs) | script_inputs(tab.ext_scripts))

    def generate(data: dict[Any, Any], request: gr.Request):
        values = settings_overrides(ui_values(tab, data), data, clip_skip)
        values["alwayson_scripts"] = alwayson_values(tab.ext_scripts, data)
        if picker_inputs:  # the Additional Networks rows become <lora:name:weight> tags
            from ui.extra_networks import apply_picker

            values["prompt"] = apply_picker(values["prompt"], *(data[c] for c in picker_inputs))
        yield from generate_updates(tab, engine, queue, values, request, xyz_args(tab.script, data),
                                    data[tab.script.confirmed])
        if checkpoint_dropdowns:
            choice = checkpoint_choices(engine)
            yield {dropdown: choice for dropdown in checkpoint_dropdowns}

    tab.generate.click(generate, inputs=inputs, outputs=outputs, concurrency_limit=None,
                       show_progress="hidden")
    wire_generation_controls(tab, engine, queue)
    wire_script_controls(tab.script, engine)
    # The WebUI's Hires. fix is an accordion whose open state is the switch; keep both in step.
    tab.hires_accordion.expand(lambda: True, outputs=f["enable_hr"], queue=False, show_progress="hidden")
    tab.hires_accordion.collapse(lambda: False, outputs=f["enable_hr"], queue=False, show_progress="hidden")
