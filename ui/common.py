"""Widgets and helpers every tab uses: the checkpoint row, job watching, progress and error boxes,
and the pieces the generation tabs (txt2img, img2img) share: prompt row, output column, job stream."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from ui.i18n import t, translate

if TYPE_CHECKING:
    from core.engine import Engine
    from core.generation.params import GeneratedImage
    from core.jobs import Job, JobQueue, ProgressSnapshot

POLL_SECONDS = 0.3
NO_CHECKPOINT = ("No checkpoint found. Put a .safetensors checkpoint into {folder} "
                 "and press 🔄 next to the checkpoint list.")


# ------------------------------------------------------------------ job watching --
@dataclass
class JobStatus:
    """One look at a submitted job: its queue position (0 = running, -1 = finished) and progress."""

    job: Job
    position: int
    snapshot: ProgressSnapshot | None


def watch_job(queue: JobQueue, job: Job, interval: float = POLL_SECONDS) -> Iterator[JobStatus]:
    """Yield the job's status every ``interval`` seconds until it ends, then once more (finished).

    Waits on the job's own event, so the last status comes as soon as the job is done.
    """
    while not job.done:
        snap = queue.progress(job_id=job.id)
        yield JobStatus(job, snap.position if snap.job_id == job.id else queue.position(job),
                        snap if snap.job_id == job.id and snap.state != "queued" else None)
        job.done_event.wait(interval)
    yield JobStatus(job, -1, job.progress)


def ui_owner(request: Any) -> str:
    """Who a browser's jobs belong to: the login name, else this page's session (one browser tab)."""
    username = getattr(request, "username", None) if request is not None else None
    if username:
        return f"user:{username}"
    session = getattr(request, "session_hash", None) if request is not None else None
    return f"ui:{session or 'anonymous'}"


def job_error_message(job: Job) -> str | None:
    """What went wrong, in words a user can act on; None when the job did not fail."""
    from core.errors import JobInterrupted

    if job.error is None or isinstance(job.error, JobInterrupted):
        return None
    return job.error_message or str(job.error) or type(job.error).__name__


# --------------------------------------------------------------------- rendering --
def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = max(int(round(seconds)), 0)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes:02}:{secs:02}"


def progress_html(status: JobStatus | None, request: Any = None) -> str:
    """A bar with "Step 5/20 · ETA 00:03" (or the queue position) for the progress box."""
    if status is None:
        return ""
    if status.position > 0:
        label = f"{translate('Queued', request)} · {translate('position', request)} {status.position}"
        return _bar(0.0, label)
    snap = status.snapshot
    if status.position < 0:
        state = {"interrupted": "Interrupted", "failed": "Error"}.get(snap.state if snap else "", "Done")
        fraction = 1.0 if state == "Done" or snap is None else snap.fraction
        return _bar(fraction, translate(state, request))
    if snap is not None and snap.state == "paused":
        return _bar(snap.fraction, translate("Paused", request))
    if snap is None or not snap.total_steps:
        text = (snap.textinfo if snap is not None else "") or translate("Loading checkpoint", request)
        return _bar(0.0, text)
    label = (f"{translate('Step', request)} {snap.step}/{snap.total_steps} · "
             f"{translate('ETA', request)} {format_seconds(snap.eta_seconds)}")
    if snap.job_count > 1:
        label += f" · {snap.job_no}/{snap.job_count} {translate('images', request)}"
    return _bar(snap.fraction, label)


def _bar(fraction: float, label: str) -> str:
    percent = max(0.0, min(fraction, 1.0)) * 100
    return (
        '<div class="kiln-progress">'
        f'<div class="kiln-progress-fill" style="width:{percent:.1f}%"></div>'
        f'<span class="kiln-progress-text">{html.escape(label)}</span></div>'
    )


def error_html(message: str | None, request: Any = None) -> str:
    if not message:
        return ""
    return (f'<div class="kiln-error"><b>{html.escape(translate("Error", request))}:</b> '
            f"{html.escape(message)}</div>")


def warning_html(message: str | None) -> str:
    """Notes about a finished job (a LoRA not found, a size rounded) that are not failures."""
    if not message:
        return ""
    return f'<div class="kiln-error kiln-warning">{html.escape(message)}</div>'


def infotext_html(infotext: str | None) -> str:
    if not infotext:
        return ""
    return f'<div class="kiln-infotext">{html.escape(infotext)}</div>'


def note_html(message: str | None) -> str:
    """What a finished job did that is worth a line (where a batch wrote its pictures)."""
    if not message:
        return ""
    return f'<div class="kiln-notice">{html.escape(message)}</div>'


# ------------------------------------------------------------- generation tabs --
# txt2img and img2img share these: the prompt row, the output column, the job stream and the
# controls acting on the caller's own job.
@dataclass
class GenerationTab:
    """What every generation tab has: ``fields`` (API field name → component), the prompt row's
    widgets (``build_prompt_row``), 🎲 / ♻️ and the output column's (``build_output_column``,
    with Send to img2img / Send to inpaint under the gallery)."""

    fields: dict[str, Any]
    prompt_tokens: gr.HTML
    negative_tokens: gr.HTML
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    random_seed: gr.Button
    reuse_seed: gr.Button
    gallery: gr.Gallery
    infotext: gr.HTML
    progress: gr.HTML
    preview: gr.Image
    error: gr.HTML
    send_img2img: gr.Button
    send_inpaint: gr.Button
    infotexts_state: gr.State
    seeds_state: gr.State
    selected_state: gr.State


def build_prompt_row(prefix: str, beside: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Prompt and negative prompt (token counters in their corner) beside Generate / Interrupt / Skip;
    ``beside()`` builds more under those buttons (the Styles row), its result returned as ``beside``."""
    fields: dict[str, Any] = {}
    with gr.Row(elem_id=f"{prefix}-prompt-row"):
        with gr.Column(scale=6):
            # The counter sits in the box's top-right corner, as in the WebUI (see CSS .kiln-prompt).
            with gr.Group(elem_classes=["kiln-prompt"]):
                fields["prompt"] = gr.Textbox(label=t("Prompt"), lines=3, max_lines=12, elem_id=f"{prefix}-prompt",
                                              elem_classes=["kiln-prompt-box"])
                prompt_tokens = gr.HTML("", elem_id=f"{prefix}-token-counter", elem_classes=["kiln-token-counter"])
            with gr.Group(elem_classes=["kiln-prompt"]):
                fields["negative_prompt"] = gr.Textbox(label=t("Negative prompt"), lines=2, max_lines=12,
                                                       elem_id=f"{prefix}-negative-prompt",
                                                       elem_classes=["kiln-prompt-box"])
                negative_tokens = gr.HTML("", elem_id=f"{prefix}-negative-token-counter",
                                          elem_classes=["kiln-token-counter"])
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button(t("Generate"), variant="primary", size="lg", elem_id=f"{prefix}-generate")
            with gr.Row():
                interrupt = gr.Button(t("Interrupt"), elem_id=f"{prefix}-interrupt", min_width=80)
                skip = gr.Button(t("Skip"), elem_id=f"{prefix}-skip", min_width=80)
            extra = beside() if beside is not None else None
    return {"fields": fields, "prompt_tokens": prompt_tokens, "negative_tokens": negative_tokens,
            "generate": generate, "interrupt": interrupt, "skip": skip, "beside": extra}


def build_output_column(prefix: str) -> dict[str, Any]:
    """Progress, error box, live preview, gallery, the send-to buttons and the generation info."""
    progress = gr.HTML("", label=t("Progress"), elem_id=f"{prefix}-progress", elem_classes=["kiln-progress-box"])
    error = gr.HTML("", elem_id=f"{prefix}-error", elem_classes=["kiln-error-box"])
    preview = gr.Image(label=t("Live preview"), type="pil", format="png", interactive=False,
                       elem_id=f"{prefix}-preview", height=160, visible=True)
    gallery = gr.Gallery(label=t("Output"), format="png", columns=2, height=480, interactive=False,
                         elem_id=f"{prefix}-gallery", preview=False)
    with gr.Row(elem_id=f"{prefix}-send-row"):
        send_img2img = gr.Button(t("Send to img2img"), elem_id=f"{prefix}-send-to-img2img", size="sm")
        send_inpaint = gr.Button(t("Send to inpaint"), elem_id=f"{prefix}-send-to-inpaint", size="sm")
    infotext = gr.HTML("", label=t("Generation info"), elem_id=f"{prefix}-infotext")
    return {"progress": progress, "error": error, "preview": preview, "gallery": gallery, "infotext": infotext,
            "send_img2img": send_img2img, "send_inpaint": send_inpaint, "infotexts_state": gr.State([]),
            "seeds_state": gr.State([]), "selected_state": gr.State(0)}


def token_counter_html(engine: Engine, text: str, steps: float | None, is_positive: bool = True) -> str:
    """"12/75" for the counter above a prompt box (the WebUI's format)."""
    from core.errors import KilnError

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


def submit_generation(tab: GenerationTab, queue: JobQueue, fn: Any, description: str, options: Any,
                      request: Any = None) -> Iterator[dict[Any, Any]]:
    """Queue ``fn(ctx)`` as this browser's generate job (``options``: the RunOptions fixed at submit)
    and yield the tab's progress and live preview until it ends, then the error if it failed.
    Returns the finished job (``job = yield from submit_generation(...)``)."""
    job = queue.submit(fn, description=description, owner=ui_owner(request), kind="generate", options=options)
    try:
        yield {tab.error: "", tab.preview: None}
        shown_preview = -1
        # The WebUI's live_preview_refresh_period, fixed with the job's other options at submit.
        interval = int(getattr(options, "live_preview_refresh_period", POLL_SECONDS * 1000)) / 1000
        for status in watch_job(queue, job, interval=interval):
            update: dict[Any, Any] = {tab.progress: progress_html(status, request)}
            snap = status.snapshot
            if snap is not None and snap.preview is not None and snap.preview_step != shown_preview:
                shown_preview = snap.preview_step
                update[tab.preview] = snap.preview
            yield update
    finally:
        if not job.done:  # the page went away (closed tab, reload): nobody will see the result
            queue.interrupt(job.id)
    message = job_error_message(job)
    if message:
        gr.Warning(message)
        yield {tab.error: error_html(message, request)}
    return job


def gallery_updates(tab: GenerationTab, images: list[Any], infotexts: list[str], seeds: list[int],
                    notes: str = "") -> dict[Any, Any]:
    """The finished job on the page: gallery, the first picture's info, seeds for ♻️, notes."""
    final: dict[Any, Any] = {
        tab.gallery: images,
        tab.infotext: infotext_html(infotexts[0] if infotexts else ""),
        tab.infotexts_state: infotexts,
        tab.seeds_state: seeds,
        tab.selected_state: 0,
    }
    if notes:
        final[tab.error] = notes
    return final


def wire_generation_controls(tab: GenerationTab, engine: Engine, queue: JobQueue) -> None:
    """Interrupt / Skip (this browser's job only), token counters, 🎲 / ♻️ and the gallery's info."""
    f = tab.fields

    def interrupt(request: gr.Request) -> None:
        queue.interrupt(owner=ui_owner(request))

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


# ---------------------------------------------------------------- checkpoint row --
@dataclass
class CheckpointRow:
    dropdown: gr.Dropdown
    refresh: gr.Button
    notice: gr.HTML
    row: Any = None  # the top row: quick settings are added to it once the Settings tab is built


def checkpoint_value(engine: Engine) -> str | None:
    """The selected checkpoint as the dropdown lists it (``engine.checkpoint_titles``: the hash
    only once known, so building the page never hashes gigabytes)."""
    entry = engine.selected_checkpoint()
    return entry.title if entry is not None else None


def checkpoint_labels(engine: Engine) -> list[tuple[str, str]]:
    """(label, title) pairs for the dropdown: a file that failed to load stays listed, marked."""
    return [(f"{e.title} ⚠" if engine.checkpoint_error(e) else e.title, e.title)
            for e in engine.registry.checkpoints()]


def checkpoint_choices(engine: Engine) -> dict[str, Any]:
    """A dropdown update with the current titles and selection (titles gain a hash on first load)."""
    return gr.update(choices=checkpoint_labels(engine), value=checkpoint_value(engine))


EXTENSIONS_FAILED = "Extensions that failed to load (see the Extensions tab):"


def notice_html(engine: Engine, request: Any = None) -> str:
    """Beside the checkpoint list: where to put a checkpoint when there is none, which files
    failed to load and why, and which extensions failed (in the browser's language)."""
    broken = _broken_extensions_line(engine, request)
    if not engine.registry.checkpoints():
        text = translate(NO_CHECKPOINT, request).format(folder=engine.paths.ckpt_dir)
        return f'<div class="kiln-notice">{html.escape(chr(10).join([text, *broken]))}</div>'
    failed = [(e, engine.checkpoint_error(e)) for e in engine.registry.checkpoints() if engine.checkpoint_error(e)]
    lines = [f"{translate('Could not load', request)} {e.name}: {why}" for e, why in failed]
    if failed and engine.fallback_note and engine.loaded_checkpoint() is not None:
        lines.append(f"{translate('Using', request)} {engine.loaded_checkpoint().name}")
    lines += broken
    if not lines:
        return ""
    return f'<div class="kiln-notice kiln-warning">{html.escape(chr(10).join(lines))}</div>'


def _broken_extensions_line(engine: Engine, request: Any = None) -> list[str]:
    """One line naming the extensions that failed to load (their errors are on the Extensions tab)."""
    from core.extensions.registry import FAILED

    names = [r.name for r in engine.extensions.by_state(FAILED)]
    if not names:
        return []
    return [f"{translate(EXTENSIONS_FAILED, request)} {', '.join(names)}"]


def build_checkpoint_row(engine: Engine) -> CheckpointRow:
    with gr.Row(elem_id="kiln-top-row") as row:
        dropdown = gr.Dropdown(
            label=t("Stable Diffusion checkpoint"), choices=checkpoint_labels(engine),
            value=checkpoint_value(engine), elem_id="kiln-checkpoint", scale=4, min_width=320,
            allow_custom_value=False,
        )
        refresh = gr.Button("🔄", elem_id="kiln-refresh-checkpoints", scale=0, min_width=48,
                            elem_classes=["kiln-tool-button"])
    notice = gr.HTML(notice_html(engine), elem_id="kiln-no-checkpoint")
    return CheckpointRow(dropdown=dropdown, refresh=refresh, notice=notice, row=row)


def refreshed_checkpoint_choices(engine: Engine, request: Any = None) -> tuple[dict[str, Any], str]:
    """Rescan the folders; a dropdown update plus the no-checkpoint notice."""
    engine.refresh_models()
    return checkpoint_choices(engine), notice_html(engine, request)


CSS = """
#kiln-top-row { align-items: flex-end; }
.kiln-tool-button { max-width: 48px; min-width: 48px !important; height: 42px; align-self: flex-end; }
.kiln-progress { position: relative; height: 26px; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.kiln-progress-fill { position: absolute; left: 0; top: 0; bottom: 0; background: var(--color-accent); opacity: .55;
  transition: width .25s; }
.kiln-progress-text { position: relative; padding: 0 8px; line-height: 26px; font-size: 13px; }
.kiln-error { border: 1px solid #d33; background: rgba(220, 50, 50, .12); color: var(--body-text-color);
  padding: 8px 12px; border-radius: 6px; white-space: pre-wrap; }
.kiln-warning { border-color: #d90; background: rgba(220, 160, 0, .12); }
.kiln-notice { border: 1px solid var(--color-accent); padding: 8px 12px; border-radius: 6px; white-space: pre-wrap; }
.kiln-infotext { white-space: pre-wrap; font-family: var(--font-mono); font-size: 12px; padding: 6px 2px;
  word-break: break-word; }
.kiln-prompt { position: relative; }
.kiln-prompt .kiln-token-counter { position: absolute; top: 6px; right: 14px; z-index: 5; font-size: 12px;
  opacity: .8; min-height: 0 !important; padding: 0 !important; background: transparent; border: 0;
  width: auto !important; }
.kiln-progress-box, .kiln-error-box { min-height: 0 !important; }
/* Message boxes take no room while they have nothing to say. */
.kiln-error-box:not(:has(.kiln-error, .kiln-notice)), #kiln-no-checkpoint:not(:has(.kiln-notice)),
.kiln-progress-box:not(:has(.kiln-progress)) { display: none; }
/* A label never runs past its box: a long word ("底模 (pretrained_model_name_or_path)" in a narrow
   column) breaks instead of being cut off. */
span[data-testid="block-info"] { max-width: 100%; overflow-wrap: break-word; }
/* A slider's head: its label keeps whole words ("Denoising strength", 重绘幅度 broke into
   "重绘幅 / 度" in the narrow Hires. fix columns); the number box is smaller and goes below it when
   the two do not fit side by side. */
.head:has(> .tab-like-container input[type=number]) > label { min-width: 0; flex: 1 1 auto; }
.head > .tab-like-container { flex: 0 1 auto; }
.head > .tab-like-container input[type=number] { width: 4.5em !important; min-width: 3.5em; }
/* img2img: a mask shows on grey, so its white (repaint) parts are seen. */
#img2img-upload-mask img { background: #7f7f7f; }
/* Extra networks cards (ui/extra_networks.py): a grid of 56px rows. A card with a preview spans
   four (a portrait picture card, as the WebUI's); a card without one is a compact tile one row
   high: its image (src ends in kiln-card-tile.png) is hidden and the caption, type over name, is
   the tile. The galleries are as tall as their cards, up to a scroll height. */
#kiln-extra-networks .kiln-en-gallery { height: auto !important; }
#kiln-extra-networks .kiln-en-gallery .grid-wrap { height: auto !important; max-height: 340px; }
#kiln-extra-networks .kiln-en-gallery .grid-container { grid-template-rows: none; grid-auto-rows: 56px; }
#kiln-extra-networks .kiln-en-gallery .gallery-item { grid-row: span 4; }
#kiln-extra-networks .kiln-en-gallery .thumbnail-item { aspect-ratio: auto; }
#kiln-extra-networks .kiln-en-gallery .gallery-item:has(img[src$="kiln-card-tile.png"]) { grid-row: span 1; }
#kiln-extra-networks .kiln-en-gallery .thumbnail-item:has(img[src$="kiln-card-tile.png"]) img { display: none; }
#kiln-extra-networks .kiln-en-gallery .thumbnail-item:has(img[src$="kiln-card-tile.png"]) .caption-label {
  position: static; max-width: none; width: 100%; max-height: 100%; box-sizing: border-box; border: 0;
  border-radius: 0; background: transparent; color: var(--body-text-color); opacity: 1; padding: 0 10px;
  font-size: 13px; line-height: 15px; text-align: left; white-space: pre-line; overflow-wrap: anywhere;
  overflow: hidden; display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 3; }
#kiln-extra-networks .kiln-en-gallery .thumbnail-item:has(img[src$="kiln-card-tile.png"]) .caption-label::first-line {
  font-size: 11px; color: color-mix(in srgb, var(--body-text-color) 62%, transparent); }
"""

# The WebUI's keys in a prompt box: Ctrl/Cmd+Enter generates, Alt+Enter skips, Esc interrupts
# (the buttons of the box's own tab: "img2img-prompt" → "img2img-generate").
KEYBOARD_JS = """
() => {
  document.addEventListener('keydown', (event) => {
    const box = event.target.closest && event.target.closest('.kiln-prompt-box');
    if (!box || !box.id) return;
    const tab = box.id.split('-')[0];
    const click = (id) => { event.preventDefault(); document.getElementById(id)?.click(); };
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) click(tab + '-generate');
    else if (event.key === 'Enter' && event.altKey) click(tab + '-skip');
    else if (event.key === 'Escape') click(tab + '-interrupt');
  });
}
"""
