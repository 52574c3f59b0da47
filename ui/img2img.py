"""The img2img tab: img2img, Inpaint (draw the mask), Inpaint upload (a mask file) and Batch (a folder).

Like txt2img, every parameter widget is registered under its /sdapi/v1/img2img field name, so
the page becomes ``Img2ImgParams`` through the API's own conversion
(``core.api.convert.img2img_params_from_request``) with the pictures handed over as PIL images.
The radios show the WebUI's names (its UI defaults: Just resize, Inpaint masked, original,
Whole picture) and become the API's indices in ``request_values``.

"Send to img2img" / "Send to inpaint" (under every gallery and in PNG Info) put a picture and
its infotext's settings here: ``wire_send_to``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image, ImageChops

from core.api.convert import img2img_params_from_request
from core.errors import InvalidParameterError, KilnError
from core.generation.img2img_batch import PNG_INFO_FIELDS, BatchParams
from core.generation.masking import INPAINT_AREAS, MASK_MODES, MASKED_CONTENT, RESIZE_MODES
from ui.common import (
    GenerationTab,
    build_output_column,
    build_prompt_row,
    checkpoint_choices,
    error_html,
    gallery_updates,
    note_html,
    submit_generation,
    warning_html,
    wire_generation_controls,
)
from ui.extensions import ExtensionScript, alwayson_values, build_script_accordions, script_inputs
from ui.i18n import t, translate
from ui.styles import build_styles_editor, build_styles_row
from ui.txt2img import (
    build_cfg_row,
    build_sampler_controls,
    build_seed_controls,
    build_size_controls,
    result_updates,
    settings_overrides,
    ui_values,
)
from ui.xyz import ScriptControls, build_script_controls, job_for_generate, wire_script_controls, xyz_args

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue
    from core.xyz.plan import XyzArgs

# Sub-tab ids (the WebUI's img2img modes 0, 2, 4 and 5); the mask controls show on the last three.
IMG2IMG, INPAINT, INPAINT_UPLOAD, BATCH = "img2img", "inpaint", "inpaint_upload", "batch"
MODES = (IMG2IMG, INPAINT, INPAINT_UPLOAD, BATCH)
MODE_TITLES = {IMG2IMG: "img2img", INPAINT: "Inpaint", INPAINT_UPLOAD: "Inpaint upload", BATCH: "Batch"}
MASK_CONTROL_MODES = (INPAINT, INPAINT_UPLOAD, BATCH)
# The WebUI's UI defaults (the API's differ: fill, Only masked, padding 0).
DEFAULT_MASKED_CONTENT = "original"
DEFAULT_INPAINT_AREA = "Whole picture"
DEFAULT_PADDING = 32
BATCH_SHOWN = 32  # the WebUI's "Show the first N batch img2img results in UI"
RADIOS = {"resize_mode": RESIZE_MODES, "inpainting_mask_invert": MASK_MODES, "inpainting_fill": MASKED_CONTENT,
          "inpaint_full_res": INPAINT_AREAS}
BRUSH_COLOUR = "#ffffff"
EDITOR_HINT = "Drop a picture here or click to upload, then paint over what to repaint"
BATCH_HELP = ("Process images in a directory on the same machine where the server is running. "
              "Leave the output directory empty to save them to the img2img output folder. "
              "Give an inpaint batch mask directory to inpaint: each picture takes the mask of the same name.")


@dataclass
class Img2ImgTab(GenerationTab):
    mode_tabs: gr.Tabs
    mode_tab: dict[str, gr.Tab]  # mode → its sub-tab
    mode: gr.State  # the sub-tab shown (one of MODES)
    init_image: gr.Image
    inpaint_editor: gr.ImageEditor
    upload_image: gr.Image
    upload_mask: gr.Image
    batch: dict[str, Any]  # BatchParams field name → component
    mask_controls: gr.Column
    script: ScriptControls | None = None  # the Script dropdown (X/Y/Z plot)
    ext_scripts: list[ExtensionScript] = field(default_factory=list)  # extensions' always-on accordions


def _radio(names: tuple[str, ...], value: str, label: str, elem_id: str) -> gr.Radio:
    return gr.Radio(label=t(label), choices=[(t(name), name) for name in names], value=value, elem_id=elem_id)


def build_img2img_tab(engine: Engine) -> Img2ImgTab:
    prompt_row = build_prompt_row("img2img", beside=lambda: build_styles_row(engine, "img2img"))
    f: dict[str, Any] = prompt_row.pop("fields")
    styles = prompt_row.pop("beside")
    f["styles"] = styles.dropdown  # the API's styles field
    build_styles_editor(engine, "img2img", styles, f["prompt"], f["negative_prompt"])
    batch: dict[str, Any] = {}
    mode_tab: dict[str, gr.Tab] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=380):
            with gr.Tabs(elem_id="img2img-mode-tabs") as mode_tabs:
                with gr.Tab(t(MODE_TITLES[IMG2IMG]), id=IMG2IMG, elem_id="img2img-mode-img2img") as mode_tab[IMG2IMG]:
                    init_image = gr.Image(label=t("Image for img2img"), type="pil", image_mode="RGBA", format="png",
                                          sources=["upload", "clipboard"], elem_id="img2img-image", height=420)
                with gr.Tab(t(MODE_TITLES[INPAINT]), id=INPAINT, elem_id="img2img-mode-inpaint") as mode_tab[INPAINT]:
                    # One white brush on one layer: what is drawn is the mask (white = repaint).
                    inpaint_editor = gr.ImageEditor(
                        label=t("Image for inpainting with mask"), type="pil", image_mode="RGBA", format="png",
                        sources=["upload", "clipboard"], layers=False, transforms=(), placeholder=t(EDITOR_HINT),
                        brush=gr.Brush(colors=[BRUSH_COLOUR], default_color=BRUSH_COLOUR, color_mode="fixed"),
                        eraser=gr.Eraser(), elem_id="img2img-inpaint-editor", height=480)
                with gr.Tab(t(MODE_TITLES[INPAINT_UPLOAD]), id=INPAINT_UPLOAD,
                            elem_id="img2img-mode-inpaint-upload") as mode_tab[INPAINT_UPLOAD]:
                    upload_image = gr.Image(label=t("Image for img2img"), type="pil", image_mode="RGBA", format="png",
                                            sources=["upload", "clipboard"], elem_id="img2img-upload-image",
                                            height=300)
                    upload_mask = gr.Image(label=t("Mask"), type="pil", image_mode="RGBA", format="png",
                                           sources=["upload", "clipboard"], elem_id="img2img-upload-mask", height=300)
                with gr.Tab(t(MODE_TITLES[BATCH]), id=BATCH, elem_id="img2img-mode-batch") as mode_tab[BATCH]:
                    gr.Markdown(t(BATCH_HELP), elem_id="img2img-batch-help")
                    batch["input_dir"] = gr.Textbox(label=t("Input directory"), elem_id="img2img-batch-input-dir")
                    batch["output_dir"] = gr.Textbox(label=t("Output directory"), elem_id="img2img-batch-output-dir")
                    batch["mask_dir"] = gr.Textbox(
                        label=t("Inpaint batch mask directory (required for inpaint batch processing only)"),
                        elem_id="img2img-batch-mask-dir")
                    with gr.Accordion(t("PNG info"), open=False, elem_id="img2img-batch-png-info"):
                        batch["use_png_info"] = gr.Checkbox(label=t("Append png info to prompts"), value=False,
                                                            elem_id="img2img-batch-use-png-info")
                        batch["png_info_fields"] = gr.CheckboxGroup(
                            label=t("Parameters to take from png info"),
                            info=t("Prompts from png info will be appended to prompts set in ui."),
                            choices=[(t(name), name) for name in PNG_INFO_FIELDS], value=[],
                            elem_id="img2img-batch-png-info-fields")
            f["resize_mode"] = _radio(RESIZE_MODES, RESIZE_MODES[0], "Resize mode", "img2img-resize-mode")
            with gr.Column(visible=False, elem_id="img2img-mask-controls") as mask_controls:
                f["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label=t("Mask blur"), elem_id="img2img-mask-blur")
                f["inpainting_mask_invert"] = _radio(MASK_MODES, MASK_MODES[0], "Mask mode", "img2img-mask-mode")
                f["inpainting_fill"] = _radio(MASKED_CONTENT, DEFAULT_MASKED_CONTENT, "Masked content",
                                              "img2img-masked-content")
                with gr.Row():
                    f["inpaint_full_res"] = _radio(INPAINT_AREAS, DEFAULT_INPAINT_AREA, "Inpaint area",
                                                   "img2img-inpaint-area")
                    f["inpaint_full_res_padding"] = gr.Slider(0, 256, value=DEFAULT_PADDING, step=4,
                                                              label=t("Only masked padding, pixels"),
                                                              elem_id="img2img-padding")
            build_sampler_controls(f, "img2img")
            build_size_controls(f, "img2img", engine.native_size())
            build_cfg_row(f, "img2img", engine)
            f["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label=t("Denoising strength"),
                                                elem_id="img2img-denoising")
            random_seed, reuse_seed = build_seed_controls(f, "img2img")
            ext_scripts = build_script_accordions(engine, "img2img")  # above Script, as in the WebUI
            script = build_script_controls(engine, "img2img", "img2img")
        with gr.Column(scale=1, min_width=380):
            outputs = build_output_column("img2img")
    return Img2ImgTab(fields=f, **prompt_row, random_seed=random_seed, reuse_seed=reuse_seed, mode_tabs=mode_tabs,
                      mode_tab=mode_tab, mode=gr.State(IMG2IMG), init_image=init_image, inpaint_editor=inpaint_editor,
                      upload_image=upload_image, upload_mask=upload_mask, batch=batch, mask_controls=mask_controls,
                      script=script, ext_scripts=ext_scripts, **outputs)


# ----------------------------------------------------------------------- handlers --
def request_values(values: dict[str, Any]) -> dict[str, Any]:
    """Page values → /sdapi/v1/img2img field values: the radios' names become the API's indices
    (Inpaint area "Only masked" is ``inpaint_full_res`` true); an index passes through."""
    out = dict(values)
    for name, names in RADIOS.items():
        value = out.get(name)
        if isinstance(value, str):
            if value not in names:
                raise InvalidParameterError(name, f"unknown choice {value!r}", hint=", ".join(names))
            out[name] = names.index(value)
    if "inpaint_full_res" in out:
        out["inpaint_full_res"] = bool(out["inpaint_full_res"])
    return out


def editor_mask(editor: dict[str, Any] | None) -> tuple[Image.Image | None, Image.Image | None]:
    """(picture, mask) from the Inpaint editor: every stroke on any layer is mask (its alpha), so
    the mask is an RGBA whose alpha the engine reads as the WebUI's ``create_binary_mask`` does."""
    if not editor or editor.get("background") is None:
        return None, None
    background = editor["background"]
    alpha = Image.new("L", background.size, 0)
    for layer in editor.get("layers") or []:
        if layer is None:
            continue
        layer_alpha = layer.convert("RGBA").getchannel("A")
        if layer_alpha.size != background.size:
            layer_alpha = layer_alpha.resize(background.size)
        alpha = ImageChops.lighter(alpha, layer_alpha)
    mask = Image.new("RGBA", background.size, (255, 255, 255, 0))
    mask.putalpha(alpha)
    return background, mask


def mode_pictures(mode: str, init_image: Any, editor: Any, upload_image: Any, upload_mask: Any
                  ) -> tuple[list[Image.Image], Image.Image | None]:
    """The init pictures and mask for the sub-tab in use; InvalidParameterError naming what is missing."""
    where = MODE_TITLES.get(mode, mode)
    if mode == INPAINT:
        image, mask = editor_mask(editor)
    elif mode == INPAINT_UPLOAD:
        image, mask = upload_image, upload_mask
    else:
        image, mask = init_image, None
    if image is None:
        raise InvalidParameterError("init_images", "no image given", hint=f"drop a picture into the {where} tab")
    if mode == INPAINT_UPLOAD and mask is None:
        raise InvalidParameterError("mask", "no mask given",
                                    hint="upload a mask in the Inpaint upload tab (white = repaint)")
    return [image], mask


def img2img_params(values: dict[str, Any], mode: str, init_image: Any = None, editor: Any = None,
                   upload_image: Any = None, upload_mask: Any = None, scripts: Any = None) -> Any:
    """Checked ``Img2ImgParams`` for the page (``values``: API field names, radios by name;
    ``scripts``: the extensions' always-on scripts that ``values["alwayson_scripts"]`` runs)."""
    from core.generation.img2img import validate_img2img

    images, mask = mode_pictures(mode, init_image, editor, upload_image, upload_mask)
    return validate_img2img(img2img_params_from_request(request_values(values), init_images=images, mask=mask,
                                                        scripts=scripts))


def batch_params(values: dict[str, Any], batch: dict[str, Any], engine: Engine, options: Any
                 ) -> tuple[Any, BatchParams]:
    """(the per-picture template, the folders) for Batch. An empty output directory means the
    img2img output folder, as in the WebUI; folders are checked now, so a typo shows at once."""
    from core.generation.img2img_batch import check_batch
    from core.generation.params import validate
    from core.generation.saving import output_folder

    template = img2img_params_from_request(request_values(values), init_images=[], mask=None,
                                           scripts=engine.extensions)
    validate(template)
    output_dir = (batch.get("output_dir") or "").strip() or str(
        output_folder(engine.paths.resolve_output(options.outdir_img2img_samples)))
    params = BatchParams(input_dir=(batch.get("input_dir") or "").strip(), output_dir=output_dir,
                         mask_dir=(batch.get("mask_dir") or "").strip(),
                         use_png_info=bool(batch.get("use_png_info")),
                         png_info_fields=list(batch.get("png_info_fields") or []))
    check_batch(params)
    return template, params


def generate_updates(tab: Img2ImgTab, engine: Engine, queue: JobQueue, values: dict[str, Any], mode: str,
                     pictures: dict[str, Any] | None = None, batch: dict[str, Any] | None = None,
                     request: Any = None, script: XyzArgs | None = None,
                     confirmed: str | None = None) -> Iterator[dict[Any, Any]]:
    """The Generate button: queue an img2img / inpaint (or a Batch) job and yield page updates.

    ``pictures``: ``init_image``, ``editor``, ``upload_image``, ``upload_mask`` (what the sub-tabs
    hold); ``batch``: the Batch tab's values by BatchParams field name; ``script``: the X/Y/Z
    plot's arguments when chosen (``confirmed`` as in txt2img's generate_updates).
    """
    values = dict(values, save_images=bool(engine.settings.options.samples_save))
    try:
        options = engine.run_options(values.get("override_settings"))
        if mode == BATCH:
            template, folders = batch_params(values, batch or {}, engine, options)
        else:
            params = img2img_params(values, mode, **(pictures or {}), scripts=engine.extensions)
            fn, description, ask = job_for_generate(tab, engine, "img2img", script, params, options, confirmed,
                                                     lambda ctx: engine.img2img(params, ctx, options), request)
            if ask is not None:
                yield ask
                return
    except KilnError as exc:
        gr.Warning(exc.message)
        yield {tab.error: error_html(exc.message, request), tab.progress: ""}
        return
    if mode != BATCH:
        job = yield from submit_generation(tab, queue, fn, description, options, request)
        if script is not None:
            yield {tab.script.confirmed: None}
        yield from result_updates(tab, job)
        return
    from core.generation.img2img_batch import run_img2img_batch

    job = yield from submit_generation(
        tab, queue, lambda ctx: run_img2img_batch(engine, template, folders, ctx, options), "img2img batch",
        options, request)
    if job.result is not None:
        yield batch_updates(tab, job.result, folders.output_dir, request)


def batch_updates(tab: Img2ImgTab, result: Any, output_dir: str, request: Any = None) -> dict[Any, Any]:
    """The first pictures a batch wrote in the gallery, where it wrote them, and what it skipped."""
    from core.generation.infotext import read_png_infotext

    images, infotexts = [], []
    for path in result.outputs[:BATCH_SHOWN]:
        with Image.open(path) as image:
            image.load()
            infotexts.append(read_png_infotext(image) or "")
            images.append(image.copy())
    note = translate("Saved {count} images to {folder}", request).format(count=len(result.outputs),
                                                                          folder=output_dir)
    notes = note_html(note) + warning_html("\n".join(result.skipped))
    return gallery_updates(tab, images, infotexts, [], notes)


def wire_img2img(tab: Img2ImgTab, engine: Engine, queue: JobQueue, clip_skip: Any = None,
                 checkpoint_dropdowns: tuple[Any, ...] = ()) -> None:
    f = tab.fields
    pictures = {"init_image": tab.init_image, "editor": tab.inpaint_editor, "upload_image": tab.upload_image,
                "upload_mask": tab.upload_mask}
    outputs = [tab.gallery, tab.infotext, tab.progress, tab.preview, tab.error, tab.infotexts_state,
               tab.seeds_state, tab.selected_state, tab.script.confirmed, *checkpoint_dropdowns]
    inputs = (set(f.values()) | set(pictures.values()) | set(tab.batch.values()) | {tab.mode}
              | ({clip_skip} if clip_skip is not None else set()) | set(tab.script.inputs)
              | script_inputs(tab.ext_scripts))

    def generate(data: dict[Any, Any], request: gr.Request):
        values = settings_overrides(ui_values(tab, data), data, clip_skip)
        values["alwayson_scripts"] = alwayson_values(tab.ext_scripts, data)
        yield from generate_updates(tab, engine, queue, values, data[tab.mode],
                                    {name: data[c] for name, c in pictures.items()},
                                    {name: data[c] for name, c in tab.batch.items()}, request,
                                    xyz_args(tab.script, data), data[tab.script.confirmed])
        if checkpoint_dropdowns:
            choice = checkpoint_choices(engine)
            yield {dropdown: choice for dropdown in checkpoint_dropdowns}

    tab.generate.click(generate, inputs=inputs, outputs=outputs, concurrency_limit=None, show_progress="hidden")
    wire_generation_controls(tab, engine, queue)
    wire_script_controls(tab.script, engine)
    for mode, sub_tab in tab.mode_tab.items():
        sub_tab.select(lambda mode=mode: (mode, gr.Column(visible=mode in MASK_CONTROL_MODES)),
                       outputs=[tab.mode, tab.mask_controls], queue=False, show_progress="hidden")


# ------------------------------------------------------------------------ send to --
def pasted_values(tab: Img2ImgTab, parsed: dict[str, Any], engine: Engine) -> dict[str, Any]:
    """The img2img fields (and ``clip_skip``) an infotext sets, as "Send to txt2img" reads them."""
    from ui.pnginfo import dropdown_choices, txt2img_values

    values = txt2img_values(parsed, dropdown_choices(engine))
    return {name: value for name, value in values.items() if name in tab.fields or name == "clip_skip"}


def send_updates(tab: Img2ImgTab, tabs: gr.Tabs, image: Image.Image | None, parsed: dict[str, Any], target: str,
                 engine: Engine, clip_skip: Any = None) -> dict[Any, Any]:
    """Page updates that put ``image`` into the ``target`` sub-tab (img2img or inpaint) with the
    settings of its infotext, and switch there."""
    update: dict[Any, Any] = {tabs: gr.Tabs(selected="img2img"), tab.mode_tabs: gr.Tabs(selected=target),
                              tab.mode: target, tab.mask_controls: gr.Column(visible=target in MASK_CONTROL_MODES)}
    if image is None:
        return update
    values = pasted_values(tab, parsed, engine)
    update.update({tab.fields[name]: value for name, value in values.items() if name in tab.fields})
    if "styles" in values and "styles" in tab.fields:  # the list may be newer than the page's choices
        from ui.styles import style_names

        update[tab.fields["styles"]] = gr.Dropdown(choices=style_names(engine), value=values["styles"])
    if clip_skip is not None and "clip_skip" in values:
        update[clip_skip] = values["clip_skip"]
    if target == INPAINT:
        update[tab.inpaint_editor] = {"background": image, "layers": [], "composite": image}
    else:
        update[tab.init_image] = image
    return update


def open_with_parameters(path: str | None, engine: Engine | None = None) -> tuple[Image.Image | None, dict[str, Any]]:
    """A picture file and its parsed infotext ({} when it has none; styles found with ``engine``)."""
    from ui.pnginfo import read_image_parameters

    if not path or not Path(path).is_file():
        return None, {}
    _text, parsed = read_image_parameters(path, engine)
    with Image.open(path) as image:
        image.load()
        return image.copy(), parsed


def gallery_path(gallery: list[Any] | None, index: int | None) -> str | None:
    """The file of the gallery's selected picture (the first when none was clicked)."""
    if not gallery:
        return None
    item = gallery[min(max(int(index or 0), 0), len(gallery) - 1)]
    media = item[0] if isinstance(item, (tuple, list)) else item
    return media if isinstance(media, str) else None


def wire_send_to(tab: Img2ImgTab, tabs: gr.Tabs, buttons: dict[str, gr.Button], inputs: list[Any],
                 source_path: Callable[..., str | None], engine: Engine, clip_skip: Any = None) -> None:
    """``buttons``: target sub-tab (img2img / inpaint) → button; ``source_path(*inputs)`` gives the
    picture's file (a gallery's selection, PNG Info's upload)."""
    outputs = [*tab.fields.values(), tab.init_image, tab.inpaint_editor, tab.mode_tabs, tab.mode, tab.mask_controls,
               tabs, *([clip_skip] if clip_skip is not None else [])]
    for target, button in buttons.items():
        def send(*args: Any, target: str = target) -> dict[Any, Any]:
            image, parsed = open_with_parameters(source_path(*args), engine)
            return send_updates(tab, tabs, image, parsed, target, engine, clip_skip)

        button.click(send, inputs=inputs, outputs=outputs, show_progress="hidden")


def wire_gallery_send_to(source: Any, tab: Img2ImgTab, tabs: gr.Tabs, engine: Engine, clip_skip: Any = None) -> None:
    """A generation tab's Send to img2img / Send to inpaint buttons (its selected picture)."""
    wire_send_to(tab, tabs, {IMG2IMG: source.send_img2img, INPAINT: source.send_inpaint},
                 [source.gallery, source.selected_state], gallery_path, engine, clip_skip)
