"""UI helpers that need no model: translations, progress rendering, job watching, settings text."""

from __future__ import annotations

import importlib
import re
import threading
from pathlib import Path

import pytest

from core.jobs import JobQueue
from ui import i18n
from ui.common import JobStatus, format_seconds, job_error_message, progress_html, watch_job
from ui.settings import result_text

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
_LITERAL_CALL = re.compile(r"""\b(?:t|translate)\(\s*(?:f?["'])([^"']+)["']""")
_USES_SHARED_TABLES = re.compile(r"from ui\.i18n import [^\n]*\b(?:t|translate)\b")
_CONSTANT_CALL = re.compile(r"""\b(?:t|translate)\(\s*([A-Z_]+)\s*[,)]""")


def _used_keys() -> set[str]:
    keys: set[str] = set()
    for path in UI_DIR.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        if path.name != "i18n.py" and not _USES_SHARED_TABLES.search(source):
            continue  # a tab with its own tables (merged through make_i18n's extra_tables)
        keys |= set(_LITERAL_CALL.findall(source))
        module = importlib.import_module("ui" if path.stem == "__init__" else f"ui.{path.stem}")
        for constant in _CONSTANT_CALL.findall(source):
            keys.add(getattr(module, constant))
    return keys


def test_every_ui_string_is_in_both_tables():
    used = _used_keys()
    assert len(used) > 40  # the scan found the UI's labels, not nothing
    assert used - set(i18n.EN) == set()
    assert set(i18n.EN) == set(i18n.ZH_CN)
    assert all(value.strip() for value in i18n.ZH_CN.values())


def test_chinese_table_is_chinese():
    for key in ("Prompt", "Negative prompt", "Generate", "Sampling method", "Settings", "PNG Info"):
        assert re.search(r"[\u4e00-\u9fff]", i18n.ZH_CN[key]), key


def test_extra_tables_merge_into_the_gradio_tables():
    merged = i18n.make_i18n([{"en": {"Cards": "Cards"}, "zh-CN": {"Cards": "卡片"}}]).translations
    assert merged["zh-CN"]["Cards"] == "卡片" and merged["zh"]["Prompt"] == i18n.ZH_CN["Prompt"]
    assert merged["en"]["Prompt"] == "Prompt"


def test_unknown_key_fails_loudly():
    with pytest.raises(KeyError):
        i18n.t("A label nobody translated")


class _Request:
    def __init__(self, accept_language: str):
        self.headers = {"accept-language": accept_language}


def test_run_time_text_follows_the_browser_language():
    assert i18n.translate("Queued", _Request("zh-CN,zh;q=0.9,en;q=0.8")) == i18n.ZH_CN["Queued"]
    assert i18n.translate("Queued", _Request("en-US,en;q=0.9")) == "Queued"
    assert i18n.translate("Queued", _Request("fr-FR")) == "Queued"
    assert i18n.translate("Queued", None) == "Queued"


def test_format_seconds():
    assert format_seconds(None) == "--:--"
    assert format_seconds(3.4) == "00:03"
    assert format_seconds(3725) == "1:02:05"


def test_watch_job_reports_steps_then_the_end():
    queue = JobQueue()
    go = threading.Event()

    def job(ctx):
        ctx.set_total(4)
        go.wait(5)
        for _ in range(4):
            ctx.advance()
        return "made"

    try:
        handle = queue.submit(job, description="test")
        statuses = []
        for status in watch_job(queue, handle, interval=0.02):
            statuses.append(status)
            if len(statuses) == 3:
                go.set()
        assert statuses[-1].position == -1 and handle.result == "made"
        html = progress_html(statuses[-1])
        assert "Done" in html and "width:100.0%" in html
        assert job_error_message(handle) is None
    finally:
        go.set()
        queue.shutdown()


def test_failed_job_message_reaches_the_page():
    from core.errors import KilnError

    queue = JobQueue()
    try:
        def job(_ctx):
            raise KilnError("the checkpoint file is truncated", path="/m/x.safetensors", hint="download it again")

        handle = queue.submit(job)
        statuses = list(watch_job(queue, handle, interval=0.02))
        message = job_error_message(handle)
        assert message == "/m/x.safetensors: the checkpoint file is truncated — download it again"
        assert "Error" in progress_html(statuses[-1])
    finally:
        queue.shutdown()


def test_progress_text_shows_step_eta_and_queue_position():
    from core.jobs import Job, ProgressSnapshot

    job = Job(id="job-1", description="", fn=lambda ctx: None)
    running = ProgressSnapshot(job_id="job-1", state="running", step=5, total_steps=20, eta_seconds=3,
                               job_no=1, job_count=2)
    html = progress_html(JobStatus(job, 0, running), _Request("en"))
    assert "Step 5/20" in html and "ETA 00:03" in html and "1/2 images" in html and "width:25.0%" in html
    queued = progress_html(JobStatus(job, 2, None), _Request("zh-CN"))
    assert i18n.ZH_CN["Queued"] in queued and " 2" in queued


def test_settings_result_text():
    assert result_text([], []) == "Nothing changed."
    assert result_text(["sd_vae", "randn_source"], []) == "2 settings changed: sd_vae, randn_source"
    assert "rejected: samples_format" in result_text([], ["samples_format"])


def test_a_page_that_goes_away_cancels_its_job():
    import threading
    from types import SimpleNamespace

    from core.jobs import JobQueue
    from ui.common import submit_generation

    queue = JobQueue()
    started = threading.Event()

    def slow(ctx):
        ctx.set_total(1000)
        started.set()
        for _ in range(1000):
            ctx.advance()
            threading.Event().wait(0.01)

    tab = SimpleNamespace(error="error", preview="preview", progress="progress")
    try:
        updates = submit_generation(tab, queue, slow, "txt2img", None)
        next(updates)
        started.wait(5)
        next(updates)
        updates.close()  # what Gradio does when the browser disconnects
        job = queue.jobs()[0]
        job.done_event.wait(5)
        assert job.progress.state == "interrupted" and job.progress.step < 1000
    finally:
        queue.shutdown()
