"""The Queue tab's rows and buttons: own jobs for people, every job for an operator."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from core.cli import parse_flags
from core.jobs import JobQueue
from ui.queue import act, rows


def request(user=None, session="s1", lang="en"):
    return SimpleNamespace(username=user, session_hash=session, headers={"accept-language": lang})


def engine_with(flags):
    return SimpleNamespace(settings=SimpleNamespace(flags=parse_flags(flags)))


def test_people_see_their_jobs_and_an_operator_sees_all():
    engine = engine_with(["--gradio-auth", "alice:a,bob:b,boss:c", "--operator", "boss"])
    queue = JobQueue()
    gate = threading.Event()
    try:
        started = threading.Event()
        running = queue.submit(lambda ctx: started.set() or gate.wait(10), description="txt2img", owner="user:alice")
        started.wait(5)
        queued = queue.submit(lambda ctx: None, description="img2img", owner="user:bob")
        alice = rows(queue, engine, request("alice"))
        assert [r[0] for r in alice] == [running.id] and alice[0][1] == "you" and alice[0][4] == "Running"
        bob = rows(queue, engine, request("bob", lang="zh-CN"))
        assert [r[0] for r in bob] == [queued.id] and bob[0][4] == "排队中" and bob[0][6] == 1
        assert {r[1] for r in rows(queue, engine, request("boss"))} == {"user:alice", "user:bob"}
        assert "No such job" in act(queue, engine, running.id, "cancel", request("bob"))
        assert not running.interrupt_event.is_set()
        assert "asked to stop" in act(queue, engine, running.id, "cancel", request("alice"))
        assert running.interrupt_event.is_set()
        assert "asked to stop" in act(queue, engine, queued.id, "cancel", request("boss"))
    finally:
        gate.set()
        queue.shutdown()


def test_without_logins_browser_tabs_are_separate_people_but_may_see_all():
    engine = engine_with([])
    queue = JobQueue()
    try:
        job = queue.submit(lambda ctx: None, owner="ui:tab-a")
        job.wait(5)
        assert [r[0] for r in rows(queue, engine, request(session="tab-b"))] == [job.id]  # one person's machine
    finally:
        queue.shutdown()
