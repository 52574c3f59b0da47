"""The LAN studio on a real server (uvicorn on loopback): several logged-in people at once."""

from __future__ import annotations

import time

import pytest

from tests.loadtest import request_body, run_load, studio_server


def test_concurrent_clients_lose_nothing_mix_nothing_and_stop_nobody_else(tmp_path):
    result = run_load(tmp_path, clients=4, jobs_per_client=2, steps=3, max_seconds=240)
    print(result.table())
    assert result.sent == 8 and result.completed == 8 and result.failed == 0, [r.errors for r in result.reports]
    assert result.compared == 4 and result.mixed_up == 0
    assert result.foreign_progress == 0
    assert result.interrupts_sent > 0  # the bystander pressed Interrupt/Skip all along, stopping nothing


def test_a_client_that_goes_away_has_its_job_cancelled(tmp_path):
    import httpx

    with studio_server(tmp_path, ["alice"]) as (base, _engine, queue):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/sdapi/v1/txt2img", json=request_body("a red circle on a black background", 1, 150),
                       auth=("alice", "alice-pw"), timeout=3)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(j.done for j in queue.jobs()):
            time.sleep(0.2)
        jobs = [j for j in queue.jobs() if j.kind == "generate"]
        assert len(jobs) == 1 and jobs[0].owner == "user:alice"
        assert jobs[0].done and jobs[0].progress.state == "interrupted" and jobs[0].progress.step < 150
