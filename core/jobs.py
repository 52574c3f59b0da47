"""The one GPU worker: a FIFO queue of jobs with progress, live preview, Interrupt and Skip.

The UI and the REST API submit to the same queue, so a generation from a script waits its
turn behind one from the browser instead of fighting it for VRAM. Job functions run on the
worker thread and never on the web server's event loop.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import JobInterrupted, JobSkipped, KilnError

log = logging.getLogger(__name__)


@dataclass
class ProgressSnapshot:
    """What /sdapi/v1/progress and the progress bar show. Times in seconds."""

    job_id: str | None = None
    description: str = ""
    state: str = "idle"  # idle | queued | running | done | failed | interrupted
    step: int = 0
    total_steps: int = 0
    job_no: int = 0  # images finished so far (the WebUI's state.job_no)
    job_count: int = 0
    started_at: float | None = None
    eta_seconds: float | None = None
    preview: Any = None  # PIL image or None
    preview_step: int = 0
    textinfo: str = ""
    queue_length: int = 0

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0


class JobContext:
    """Handed to a running job: report steps, publish previews, honour Interrupt/Skip."""

    def __init__(self, job: Job, preview_every: int = 0):
        self.job = job
        self.preview_every = preview_every
        self._lock = threading.Lock()

    # -- progress -----------------------------------------------------------------
    def set_total(self, total_steps: int, job_count: int = 1) -> None:
        with self._lock:
            self.job.progress.total_steps = max(int(total_steps), 0)
            self.job.progress.job_count = job_count

    def set_text(self, text: str) -> None:
        self.job.progress.textinfo = text

    def advance(self, steps: int = 1) -> None:
        """One sampler step done; raises JobInterrupted/JobSkipped when asked to stop."""
        p = self.job.progress
        with self._lock:
            p.step = min(p.step + steps, max(p.total_steps, p.step + steps))
            elapsed = time.monotonic() - (self.job.started_monotonic or time.monotonic())
            if p.step and p.total_steps:
                p.eta_seconds = elapsed / p.step * (p.total_steps - p.step)
        self.check()

    def image_done(self) -> None:
        self.job.progress.job_no += 1

    def wants_preview(self, step_in_pass: int) -> bool:
        return self.preview_every > 0 and step_in_pass % self.preview_every == 0

    def set_preview(self, image: Any) -> None:
        self.job.progress.preview = image
        self.job.progress.preview_step = self.job.progress.step

    # -- stopping -----------------------------------------------------------------
    @property
    def interrupted(self) -> bool:
        return self.job.interrupt_event.is_set()

    def check(self) -> None:
        if self.job.interrupt_event.is_set():
            raise JobInterrupted()
        if self.job.skip_event.is_set():
            self.job.skip_event.clear()
            raise JobSkipped()


@dataclass
class Job:
    id: str
    description: str
    fn: Callable[[JobContext], Any]
    owner: str | None = None
    result: Any = None
    error: BaseException | None = None
    error_message: str | None = None
    progress: ProgressSnapshot = field(default_factory=ProgressSnapshot)
    done_event: threading.Event = field(default_factory=threading.Event)
    interrupt_event: threading.Event = field(default_factory=threading.Event)
    skip_event: threading.Event = field(default_factory=threading.Event)
    started_monotonic: float | None = None

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its result or raise its error."""
        if not self.done_event.wait(timeout):
            raise TimeoutError(f"job {self.id} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    @property
    def done(self) -> bool:
        return self.done_event.is_set()


class JobQueue:
    """FIFO queue served by one worker thread (the only one that touches the GPU)."""

    def __init__(self, preview_every: int | Callable[[], int] = 0):
        self._preview_every = preview_every
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._current: Job | None = None
        self._last: Job | None = None
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kiln-gpu-worker", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[JobContext], Any], description: str = "", owner: str | None = None) -> Job:
        job = Job(id=f"job-{next(self._ids)}", description=description, fn=fn, owner=owner)
        job.progress = ProgressSnapshot(job_id=job.id, description=description, state="queued")
        with self._cond:
            if self._stopping:
                raise KilnError("the server is shutting down; the job was not queued")
            self._pending.append(job)
            self._cond.notify()
        return job

    def run(self, fn: Callable[[JobContext], Any], description: str = "", owner: str | None = None,
            timeout: float | None = None) -> Any:
        """Submit and wait: the convenient form for the API and tests."""
        return self.submit(fn, description, owner).wait(timeout)

    # -- control ------------------------------------------------------------------
    def interrupt(self, job_id: str | None = None) -> bool:
        """Stop the running job (keeping finished images) or drop a queued one."""
        with self._cond:
            if job_id is not None:
                for job in self._pending:
                    if job.id == job_id:
                        job.interrupt_event.set()
                        return True
            job = self._current
        if job is not None and (job_id is None or job.id == job_id):
            job.interrupt_event.set()
            return True
        return False

    def skip(self) -> bool:
        """Skip the current batch of the running job; the job goes on with the next one."""
        job = self._current
        if job is None:
            return False
        job.skip_event.set()
        return True

    def progress(self) -> ProgressSnapshot:
        with self._cond:
            job = self._current or self._last
            queued = len(self._pending)
        snap = ProgressSnapshot() if job is None else _copy(job.progress)
        snap.queue_length = queued
        return snap

    def position(self, job: Job) -> int:
        """0 = running, n = n jobs ahead of it; -1 when finished."""
        with self._cond:
            if job is self._current:
                return 0
            for i, queued in enumerate(self._pending):
                if queued is job:
                    return i + 1
        return -1

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            for job in self._pending:
                job.interrupt_event.set()
            self._cond.notify_all()
        if self._current is not None:
            self._current.interrupt_event.set()
        self._thread.join(timeout)

    # -- worker -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._pending:
                    return
                job = self._pending.popleft()
                self._current = job
            self._execute(job)
            with self._cond:
                self._current = None
                self._last = job

    def _execute(self, job: Job) -> None:
        p = job.progress
        if job.interrupt_event.is_set():  # cancelled while queued
            p.state = "interrupted"
            job.error = JobInterrupted()
            job.done_event.set()
            return
        period = self._preview_every() if callable(self._preview_every) else self._preview_every
        ctx = JobContext(job, preview_every=period)
        p.state = "running"
        p.started_at = time.time()
        job.started_monotonic = time.monotonic()
        try:
            job.result = job.fn(ctx)
            p.state = "interrupted" if job.interrupt_event.is_set() else "done"
        except JobInterrupted as exc:
            job.error = exc
            p.state = "interrupted"
        except KilnError as exc:
            job.error = exc
            job.error_message = exc.message
            p.state = "failed"
            log.warning("job %s failed: %s", job.id, exc.message)
        except Exception as exc:  # the worker must survive anything a job does
            job.error = exc
            job.error_message = f"{type(exc).__name__}: {exc}"
            p.state = "failed"
            log.error("job %s crashed:\n%s", job.id, traceback.format_exc())
        finally:
            p.eta_seconds = 0.0
            job.done_event.set()


def _copy(p: ProgressSnapshot) -> ProgressSnapshot:
    return ProgressSnapshot(**{k: getattr(p, k) for k in p.__dataclass_fields__})
