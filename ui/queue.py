"""The Queue tab: your jobs (everyone's for an operator) with kind, state, progress and position,
and Cancel / "Stop and save" for a job you may stop. The same rules as /kiln/v1/jobs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.api.jobs_routes import is_operator, visible_jobs
from ui.common import format_seconds, ui_owner
from ui.i18n import localize_headers, t, translate

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

COLUMNS = ("Job", "Owner", "Kind", "What", "State", "Progress", "Position", "Submitted")
STATE_KEYS = {"queued": "Queued", "running": "Running", "paused": "Paused", "done": "Done", "failed": "Error",
              "interrupted": "Interrupted"}


@dataclass
class QueueTab:
    table: gr.Dataframe
    job_id: gr.Textbox
    refresh: gr.Button
    cancel: gr.Button
    stop: gr.Button
    result: gr.Markdown
    timer: gr.Timer


def build_queue_tab() -> QueueTab:
    with gr.Row():
        refresh = gr.Button(t("Refresh"), elem_id="queue-refresh", scale=0, min_width=120)
        job_id = gr.Textbox(label=t("Job"), placeholder="job-12", elem_id="queue-job-id", scale=2)
        cancel = gr.Button(t("Cancel job"), elem_id="queue-cancel", variant="stop", scale=0, min_width=140)
        stop = gr.Button(t("Stop and save"), elem_id="queue-stop", scale=0, min_width=140)
    result = gr.Markdown("", elem_id="queue-result")
    # Dataframe headers are plain text (Gradio does not translate them): the handler sends them in the
    # browser's language with every refresh.
    table = localize_headers(gr.Dataframe(headers=list(COLUMNS), value=[], interactive=False, elem_id="queue-table",
                                          wrap=True), COLUMNS, translate)
    return QueueTab(table, job_id, refresh, cancel, stop, result, gr.Timer(2.0, active=True))


def rows(queue: JobQueue, engine: Engine, request: Any) -> list[list[Any]]:
    login = getattr(request, "username", None)
    operator = is_operator(engine.settings.flags, login)
    out = []
    for job in visible_jobs(queue, ui_owner(request), operator):
        progress = f"{job['step']}/{job['total_steps']}" if job["total_steps"] else ""
        if job["state"] == "running" and job["eta_seconds"]:
            progress += f" · {translate('ETA', request)} {format_seconds(job['eta_seconds'])}"
        out.append([job["id"], job["owner"] if operator else translate("you", request), job["kind"],
                    job["description"], translate(STATE_KEYS.get(job["state"], "Done"), request), progress,
                    job["position"] if job["position"] > 0 else "", time.strftime("%H:%M:%S",
                                                                                  time.localtime(job["submitted_at"]))])
    return out


def act(queue: JobQueue, engine: Engine, job_id: str, action: str, request: Any) -> str:
    login = getattr(request, "username", None)
    owner = ui_owner(request)
    operator = is_operator(engine.settings.flags, login)
    job = queue.get((job_id or "").strip())
    if job is None or (not operator and job.owner != owner):
        return translate("No such job among yours.", request)
    fn = queue.stop if action == "stop" else queue.interrupt
    accepted = fn(job.id, owner=None if operator else owner)
    return f"{job.id}: {translate('asked to stop' if accepted else 'already finished', request)}"


def wire_queue(tab: QueueTab, engine: Engine, queue: JobQueue) -> None:
    def table(request: gr.Request):
        return gr.Dataframe(value=rows(queue, engine, request), headers=[translate(c, request) for c in COLUMNS])

    for trigger in (tab.refresh.click, tab.timer.tick):
        trigger(table, outputs=tab.table, queue=False, show_progress="hidden")
    def cancel(job_id: str, request: gr.Request) -> str:
        return act(queue, engine, job_id, "cancel", request)

    def stop(job_id: str, request: gr.Request) -> str:
        return act(queue, engine, job_id, "stop", request)

    tab.cancel.click(cancel, inputs=tab.job_id, outputs=tab.result, queue=False, show_progress="hidden")
    tab.stop.click(stop, inputs=tab.job_id, outputs=tab.result, queue=False, show_progress="hidden")

    def pick(evt: gr.SelectData):
        row = evt.row_value if hasattr(evt, "row_value") else None
        return row[0] if row else gr.skip()

    tab.table.select(pick, outputs=tab.job_id, queue=False, show_progress="hidden")
