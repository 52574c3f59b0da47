"""The GPU workers: one queue of jobs with kinds and owners, per-job progress and control.

The UI and the REST API submit to the same queue, so a generation from a script waits its
turn behind one from the browser instead of fighting it for VRAM. Job functions run on a
worker thread and never on the web server's event loop. There is one worker per device
(``--device-id 0,1``: two workers, each the only thread that touches its GPU); a free worker
takes the next job in the queue's fair order, and ``current_worker()`` tells code running in a
job which device's models to use.

Every job has a kind (generate, train, tag, merge, load...), an owner (who may see and stop
it) and a submit time. Its progress, live preview, metrics (loss, lr, epoch) and artifacts
(saved files, sample images) belong to it alone; Interrupt, Skip and "stop and save" name a
job (or the owner's current job), never "whatever runs". A long job calls
``ctx.pause_point()`` at safe places (between epochs, say): queued short jobs run right
there, then the long job goes on.
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

# Kinds a long job's pause point lets through: quick, and done with the model when they end.
SHORT_KINDS = frozenset({"generate", "load", "tag", "refresh"})
MAX_METRICS = 100_000  # one row a step for a long training run; older rows are dropped past this

_worker = threading.local()


def current_worker() -> int:
    """The index of the worker whose thread calls this (0 outside any worker: tests, handlers)."""
    return getattr(_worker, "index", 0)


def in_worker() -> bool:
    """Whether the calling thread is one of a JobQueue's workers."""
    return getattr(_worker, "index", None) is not None


@dataclass
class ProgressSnapshot:
    """What /sdapi/v1/progress and the progress bar show. Times in seconds."""

    job_id: str | None = None
    description: str = ""
    kind: str = ""
    owner: str | None = None
    state: str = "idle"  # idle | queued | running | paused | done | failed | interrupted
    step: int = 0
    total_steps: int = 0
    job_no: int = 0  # images finished so far (the WebUI's state.job_no)
    job_count: int = 0
    submitted_at: float | None = None
    started_at: float | None = None
    eta_seconds: float | None = None
    preview: Any = None  # PIL image or None
    preview_step: int = 0
    textinfo: str = ""
    queue_length: int = 0
    position: int = -1  # 0 = running, n = n jobs ahead, -1 = finished / none
    worker: int | None = None  # the worker (device) that runs or ran it

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running", "paused")


@dataclass
class Artifact:
    """Something a job made that people look at: a saved file or an in-memory image."""

    kind: str  # "image" | "model" | "sample" | "log" | ...
    label: str
    path: str | None = None
    image: Any = None
    step: int | None = None


class JobContext:
    """Handed to a running job: report steps, previews and metrics; honour Interrupt/Skip/Stop."""

    def __init__(self, job: Job, queue: JobQueue | None = None, preview_every: int = 0):
        self.job = job
        self.preview_every = preview_every
        self._queue = queue
        self._lock = threading.Lock()
        self.worker = current_worker()  # the device's worker this job runs on

    # -- progress -----------------------------------------------------------------
    def set_total(self, total_steps: int, job_count: int = 1) -> None:
        with self._lock:
            self.job.progress.total_steps = max(int(total_steps), 0)
            self.job.progress.job_count = job_count

    def set_text(self, text: str) -> None:
        self.job.progress.textinfo = text

    def advance(self, steps: int = 1, *, check: bool = True) -> None:
        """One sampler step done; raises JobInterrupted/JobSkipped when asked to stop (unless
        ``check`` is False: a trainer reads ``stop_requested`` and saves before it ends)."""
        p = self.job.progress
        with self._lock:
            p.step = min(p.step + steps, max(p.total_steps, p.step + steps))
            elapsed = self.job.running_seconds()
            if p.step and p.total_steps:
                p.eta_seconds = elapsed / p.step * (p.total_steps - p.step)
        if check:
            self.check()

    def image_done(self) -> None:
        self.job.progress.job_no += 1

    def wants_preview(self, step_in_pass: int) -> bool:
        return self.preview_every > 0 and step_in_pass % self.preview_every == 0

    def set_preview(self, image: Any) -> None:
        self.job.progress.preview = image
        self.job.progress.preview_step = self.job.progress.step

    # -- metrics and artifacts ------------------------------------------------------
    def report(self, **metrics: float) -> None:
        """Numbers beside the step count (loss, lr, epoch): a row in the job's metrics."""
        row = {"step": self.job.progress.step, "time": time.time(), **metrics}
        with self._lock:
            self.job.metrics.append(row)
            if len(self.job.metrics) > MAX_METRICS:
                del self.job.metrics[: len(self.job.metrics) - MAX_METRICS]

    def add_artifact(self, kind: str, label: str, *, path: str | None = None, image: Any = None) -> Artifact:
        artifact = Artifact(kind=kind, label=label, path=None if path is None else str(path), image=image,
                            step=self.job.progress.step)
        with self._lock:
            self.job.artifacts.append(artifact)
        return artifact

    # -- stopping -----------------------------------------------------------------
    @property
    def interrupted(self) -> bool:
        return self.job.interrupt_event.is_set()

    @property
    def stop_requested(self) -> bool:
        """"Stop and save": the job should finish what it can keep (save, write files) and end."""
        return self.job.stop_event.is_set() or self.job.interrupt_event.is_set()

    def check(self) -> None:
        if self.job.interrupt_event.is_set():
            raise JobInterrupted()
        if self.job.skip_event.is_set():
            self.job.skip_event.clear()
            raise JobSkipped()

    def pause_point(self) -> int:
        """Let queued short jobs run now, on this thread, then come back; returns how many ran.

        Call it only where the job holds nothing the short jobs need (no model lease, no
        patched weights): between epochs, between tagging folders.
        """
        if self._queue is None:
            return 0
        return self._queue._run_short_jobs_for(self.job)


@dataclass
class Job:
    id: str
    description: str
    fn: Callable[[JobContext], Any]
    kind: str = "generate"
    owner: str | None = None
    submitted_at: float = field(default_factory=time.time)
    options: Any = None  # the RunOptions snapshot taken at submit (core.generation.run_options)
    result: Any = None
    error: BaseException | None = None
    error_message: str | None = None
    progress: ProgressSnapshot = field(default_factory=ProgressSnapshot)
    metrics: list[dict[str, float]] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    done_event: threading.Event = field(default_factory=threading.Event)
    interrupt_event: threading.Event = field(default_factory=threading.Event)
    skip_event: threading.Event = field(default_factory=threading.Event)
    stop_event: threading.Event = field(default_factory=threading.Event)
    started_monotonic: float | None = None
    paused_seconds: float = 0.0  # time spent running other jobs at this job's pause points
    _callbacks: list[Callable[[Job], Any]] = field(default_factory=list, repr=False)
    _callback_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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

    def add_done_callback(self, fn: Callable[[Job], Any]) -> None:
        """Call ``fn(job)`` once the job has ended (at once if it has); from the worker thread."""
        with self._callback_lock:
            if not self.done_event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self) -> None:
        with self._callback_lock:
            self.done_event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a waiter's callback must never break the worker
                log.exception("done callback of %s failed", self.id)

    def running_seconds(self) -> float:
        if self.started_monotonic is None:
            return 0.0
        return max(time.monotonic() - self.started_monotonic - self.paused_seconds, 0.0)


class JobQueue:
    """Jobs served by ``workers`` threads (one per device, each the only one touching it), fair
    across owners.

    Owners take turns (round robin, in the order they first queued): one user's 100-image batch
    does not lock the others out, and each owner's own jobs keep their order (with several
    workers an owner's next job may start before their previous one ends, on another device).
    """

    def __init__(self, preview_every: int | Callable[[], int] = 0, *, history: int = 50, workers: int = 1):
        if workers < 1:
            raise ValueError("a queue needs at least one worker")
        self._preview_every = preview_every
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: list[Job] = []  # a stack: a long job paused under the short jobs it lets run
        self._finished: deque[Job] = deque(maxlen=history)
        self._ids = itertools.count(1)
        self._turns: deque[str | None] = deque()  # owners with queued jobs, whose turn comes first
        self._stopping = False
        self._threads = [threading.Thread(target=self._run, args=(index,), name=f"kiln-gpu-worker-{index}",
                                          daemon=True) for index in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return len(self._threads)

    def submit(self, fn: Callable[[JobContext], Any], description: str = "", owner: str | None = None, *,
               kind: str = "generate", options: Any = None) -> Job:
        job = Job(id=f"job-{next(self._ids)}", description=description, fn=fn, kind=kind, owner=owner,
                  options=options)
        job.progress = ProgressSnapshot(job_id=job.id, description=description, kind=kind, owner=owner,
                                        state="queued", submitted_at=job.submitted_at)
        with self._cond:
            if self._stopping:
                raise KilnError("the server is shutting down; the job was not queued")
            self._pending.append(job)
            if owner not in self._turns:
                self._turns.append(owner)
            self._cond.notify()
        return job

    def run(self, fn: Callable[[JobContext], Any], description: str = "", owner: str | None = None,
            timeout: float | None = None, *, kind: str = "generate", options: Any = None) -> Any:
        """Submit and wait: the convenient form for the API and tests."""
        return self.submit(fn, description, owner, kind=kind, options=options).wait(timeout)

    # -- finding jobs ---------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._cond:
            for job in (*self._running, *self._pending, *self._finished):
                if job.id == job_id:
                    return job
        return None

    def jobs(self, owner: str | None = None) -> list[Job]:
        """Running, then queued, then recently finished jobs (all, or one owner's)."""
        with self._cond:
            every = [*reversed(self._running), *self._order_locked(), *reversed(self._finished)]
        return [j for j in every if owner is None or j.owner == owner]

    def current(self, owner: str | None = None) -> Job | None:
        """The owner's (or anyone's) job that runs now, else their first queued one."""
        with self._cond:
            for job in (*reversed(self._running), *self._order_locked()):
                if owner is None or job.owner == owner:
                    return job
        return None

    # -- control ------------------------------------------------------------------
    def _target(self, job_id: str | None, owner: str | None) -> Job | None:
        if job_id is not None:
            job = self.get(job_id)
            if job is None or job.done or (owner is not None and job.owner != owner):
                return None
            return job
        return self.current(owner)

    def interrupt(self, job_id: str | None = None, *, owner: str | None = None) -> bool:
        """Stop a running job (it keeps what it finished) or drop a queued one.

        ``job_id`` names the job; without it, the owner's current job (anyone's with no owner).
        With both, the job must be the owner's: nobody stops somebody else's work.
        """
        job = self._target(job_id, owner)
        if job is None:
            return False
        job.interrupt_event.set()
        return True

    def skip(self, job_id: str | None = None, *, owner: str | None = None) -> bool:
        """Skip the current batch of a running job; the job goes on with the next one."""
        job = self._target(job_id, owner)
        if job is None or job.progress.state not in ("running", "paused"):
            return False
        job.skip_event.set()
        return True

    def stop(self, job_id: str | None = None, *, owner: str | None = None) -> bool:
        """"Stop and save": ask the job to keep what it has (a trainer saves) and end."""
        job = self._target(job_id, owner)
        if job is None:
            return False
        if job.progress.state == "queued":
            job.interrupt_event.set()  # nothing to save yet
        else:
            job.stop_event.set()
        return True

    def progress(self, owner: str | None = None, job_id: str | None = None) -> ProgressSnapshot:
        """A copy of one job's progress: ``job_id``'s, else the owner's current or last job."""
        with self._cond:
            queued = len(self._pending)
            job = None
            if job_id is not None:
                job = next((j for j in (*self._running, *self._pending, *self._finished) if j.id == job_id), None)
            else:
                for candidate in (*reversed(self._running), *self._pending, *reversed(self._finished)):
                    if owner is None or candidate.owner == owner:
                        job = candidate
                        break
            position = self._position_locked(job) if job is not None else -1
        snap = ProgressSnapshot() if job is None else _copy(job.progress)
        snap.queue_length = queued
        snap.position = position
        return snap

    def position(self, job: Job) -> int:
        """0 = running, n = n jobs ahead of it; -1 when finished."""
        with self._cond:
            return self._position_locked(job)

    def _position_locked(self, job: Job) -> int:
        if job in self._running:
            return 0
        for i, queued in enumerate(self._order_locked()):
            if queued is job:
                return i + 1
        return -1

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            for job in self._pending:
                job.interrupt_event.set()
            running = list(self._running)
            self._cond.notify_all()
        for job in running:
            job.interrupt_event.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    # -- worker -------------------------------------------------------------------
    def _order_locked(self) -> list[Job]:
        """The queued jobs in the order they will run: owners in turn, each owner's in order."""
        by_owner: dict[str | None, deque[Job]] = {}
        for job in self._pending:
            by_owner.setdefault(job.owner, deque()).append(job)
        turns = deque(owner for owner in self._turns if owner in by_owner)
        order: list[Job] = []
        while turns:
            owner = turns.popleft()
            order.append(by_owner[owner].popleft())
            if by_owner[owner]:
                turns.append(owner)
        return order

    def _take_locked(self, job: Job) -> Job:
        """Out of the queue; its owner goes to the back of the turns (or leaves them, with none left)."""
        self._pending.remove(job)
        if job.owner in self._turns:
            self._turns.remove(job.owner)
        if any(j.owner == job.owner for j in self._pending):
            self._turns.append(job.owner)
        return job

    def _run(self, index: int) -> None:
        _worker.index = index
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._pending:
                    return
                job = self._take_locked(self._order_locked()[0])
            self._execute(job)

    def _run_short_jobs_for(self, long_job: Job) -> int:
        """Run every queued short job now (called from ``long_job``'s pause point)."""
        if threading.current_thread() not in self._threads:
            return 0
        ran = 0
        while True:
            with self._cond:
                short = next((j for j in self._order_locked() if j.kind in SHORT_KINDS), None)
                if short is None or self._stopping:
                    break
                self._take_locked(short)
            started = time.monotonic()
            state = long_job.progress.state
            long_job.progress.state = "paused"
            try:
                self._execute(short)
            finally:
                long_job.progress.state = state
                long_job.paused_seconds += time.monotonic() - started
            ran += 1
        return ran

    def _execute(self, job: Job) -> None:
        p = job.progress
        with self._cond:
            self._running.append(job)
        try:
            if job.interrupt_event.is_set():  # cancelled while queued
                p.state = "interrupted"
                job.error = JobInterrupted()
                return
            period = self._preview_every() if callable(self._preview_every) else self._preview_every
            options_period = getattr(job.options, "preview_every", None)
            ctx = JobContext(job, self, preview_every=period if options_period is None else options_period)
            p.state = "running"
            p.worker = ctx.worker
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
            with self._cond:
                self._running.remove(job)
                self._finished.append(job)
            job._finish()


def _copy(p: ProgressSnapshot) -> ProgressSnapshot:
    return ProgressSnapshot(**{k: getattr(p, k) for k in p.__dataclass_fields__})
