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


# --- kinds, owners, per-job control ------------------------------------------------------------


def test_jobs_carry_kind_owner_submit_time_and_options(queue):
    job = queue.submit(lambda ctx: "ok", description="tag folder", owner="alice", kind="tag", options="opts")
    assert job.wait(5) == "ok"
    assert (job.kind, job.owner, job.options) == ("tag", "alice", "opts") and job.submitted_at > 0
    snap = queue.progress(owner="alice")
    assert (snap.job_id, snap.kind, snap.owner, snap.state) == (job.id, "tag", "alice", "done")
    assert queue.progress(owner="bob").job_id is None  # bob sees nothing of alice's


def test_nobody_interrupts_or_skips_somebody_elses_job(queue):
    started, gate = threading.Event(), threading.Event()

    def work(ctx):
        started.set()
        gate.wait(5)
        ctx.check()
        return "finished"

    alice = queue.submit(work, owner="alice")
    started.wait(5)
    assert not queue.interrupt(owner="bob") and not queue.skip(owner="bob")
    assert not queue.interrupt(alice.id, owner="bob")
    assert queue.progress(owner="bob").job_id is None
    gate.set()
    assert alice.wait(5) == "finished"
    started.clear()
    gate.clear()
    again = queue.submit(work, owner="alice")
    started.wait(5)
    assert queue.interrupt(owner="alice")
    gate.set()
    with pytest.raises(JobInterrupted):
        again.wait(5)


def test_stop_and_save_is_not_cancel(queue):
    started = threading.Event()

    def trainer(ctx):
        ctx.set_total(1000)
        saved = []
        for step in range(1000):
            started.set()
            if ctx.stop_requested:
                saved.append(f"checkpoint at step {step}")
                ctx.add_artifact("model", "last.safetensors", path="/tmp/last.safetensors")
                return saved
            ctx.report(loss=1.0 / (step + 1), lr=1e-4)
            ctx.advance()
            time.sleep(0.005)
        return saved

    job = queue.submit(trainer, kind="train", owner="alice")
    started.wait(5)
    time.sleep(0.05)
    assert queue.stop(job.id, owner="alice")
    result = job.wait(5)
    assert result and result[0].startswith("checkpoint at step")
    assert job.progress.state == "done"  # stopped cleanly, with its files
    assert job.metrics and {"step", "loss", "lr", "time"} <= job.metrics[-1].keys()
    assert job.artifacts[0].kind == "model" and job.artifacts[0].path == "/tmp/last.safetensors"


def test_a_long_job_lets_queued_short_jobs_run_at_its_pause_points(queue):
    order = []
    started, submitted = threading.Event(), threading.Event()

    def long_job(ctx):
        for epoch in range(3):
            if epoch == 1:
                started.set()
                submitted.wait(5)
                ctx.pause_point()
            order.append(f"epoch {epoch}")
        return "trained"

    train = queue.submit(long_job, kind="train", owner="alice")
    started.wait(5)
    short = queue.submit(lambda ctx: order.append("bob's picture") or "picture", kind="generate", owner="bob")
    other_train = queue.submit(lambda ctx: order.append("another training"), kind="train", owner="carol")
    submitted.set()
    assert short.wait(5) == "picture" and train.wait(5) == "trained"
    other_train.wait(5)
    # The short job ran inside the first one's pause; the other long job waited its turn.
    assert order == ["epoch 0", "bob's picture", "epoch 1", "epoch 2", "another training"]


def test_owners_take_turns_and_each_keeps_its_own_order(queue):
    order = []
    gate, started = threading.Event(), threading.Event()
    first = queue.submit(lambda ctx: started.set() or gate.wait(5), owner="alice")
    started.wait(5)
    jobs = [queue.submit(lambda ctx, n=n: order.append(n), owner="alice") for n in ("a1", "a2", "a3")]
    jobs += [queue.submit(lambda ctx, n=n: order.append(n), owner="bob") for n in ("b1", "b2")]
    jobs.append(queue.submit(lambda ctx: order.append("c1"), owner="carol"))
    # Owners take turns in the order they queued; each owner's jobs keep theirs.
    assert [j.owner for j in queue.jobs() if not j.done][1:] == ["alice", "bob", "carol", "alice", "bob", "alice"]
    assert queue.position(jobs[0]) == 1 and queue.position(jobs[-1]) == 3 and queue.position(jobs[2]) == 6
    gate.set()
    first.wait(5)
    for job in jobs:
        job.wait(5)
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]
