"""The job queue: FIFO, progress, interrupt/skip within one step, worker survives errors."""

import threading
import time

import pytest

from core.errors import JobInterrupted, JobSkipped, KilnError
from core.jobs import JobQueue


@pytest.fixture
def queue():
    q = JobQueue(preview_every=2)
    yield q
    q.shutdown()


def test_jobs_run_in_submission_order(queue):
    order = []
    gate, started = threading.Event(), threading.Event()
    first = queue.submit(lambda ctx: started.set() or (gate.wait(5) and order.append(1)))
    started.wait(5)
    jobs = [queue.submit(lambda ctx, i=i: order.append(i)) for i in (2, 3, 4)]
    assert queue.position(jobs[-1]) == 3
    gate.set()
    for job in [first, *jobs]:
        job.wait(5)
    assert order == [1, 2, 3, 4]


def test_progress_and_eta(queue):
    seen = []

    def work(ctx):
        ctx.set_total(4, job_count=1)
        for _ in range(4):
            ctx.advance()
            seen.append(queue.progress().step)
        return "ok"

    assert queue.run(work, timeout=5) == "ok"
    assert seen == [1, 2, 3, 4]
    snap = queue.progress()
    assert snap.state == "done" and snap.fraction == 1.0


def test_interrupt_stops_within_one_step_and_keeps_results(queue):
    started = threading.Event()
    finished_steps = []

    def work(ctx):
        ctx.set_total(1000)
        kept = []
        try:
            for i in range(1000):
                if i == 3:
                    started.set()
                    time.sleep(0.2)
                ctx.advance()
                kept.append(i)
        except JobInterrupted:
            finished_steps.extend(kept)
            return kept
        return kept

    job = queue.submit(work)
    started.wait(5)
    queue.interrupt()
    result = job.wait(5)
    assert len(result) <= 4
    assert queue.progress().state == "interrupted"


def test_skip_raises_once_then_job_continues(queue):
    skipped = []
    gate = threading.Event()

    def work(ctx):
        ctx.set_total(10)
        for batch in range(2):
            try:
                if batch == 0:
                    gate.wait(5)
                ctx.advance()
            except JobSkipped:
                skipped.append(batch)
        return "done"

    job = queue.submit(work)
    time.sleep(0.05)
    queue.skip()
    gate.set()
    assert job.wait(5) == "done"
    assert skipped == [0]


def test_failing_job_reports_and_worker_survives(queue):
    def bad(ctx):
        raise KilnError("model broken", path="x.safetensors", hint="re-download it")

    job = queue.submit(bad)
    with pytest.raises(KilnError):
        job.wait(5)
    assert job.error_message == "x.safetensors: model broken — re-download it"

    def crash(ctx):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        queue.run(crash, timeout=5)
    assert queue.run(lambda ctx: 42, timeout=5) == 42


def test_interrupting_a_queued_job_cancels_it(queue):
    gate = threading.Event()
    running = queue.submit(lambda ctx: gate.wait(5))
    queued = queue.submit(lambda ctx: "should not run")
    assert queue.interrupt(queued.id)
    gate.set()
    running.wait(5)
    with pytest.raises(JobInterrupted):
        queued.wait(5)
