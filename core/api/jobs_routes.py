"""Kiln's own queue routes (/kiln/v1/jobs): each person sees and stops their own jobs; operators all.

The WebUI has one global job; Kiln has a queue with owners. Logins are HTTP Basic (core.api.auth).
Without any login (Kiln on loopback for one person) the caller may see every job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request

from core.api.auth import page_and_api_logins

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import Job, JobQueue


def is_operator(flags: Any, login: str | None) -> bool:
    """Operators see and stop every job: the ``--operator`` logins; everyone when there are no logins."""
    page, api = page_and_api_logins(flags)
    if not page and not api:
        return True
    return login is not None and login in (getattr(flags, "operators", None) or [])


def job_row(job: Job, position: int) -> dict[str, Any]:
    p = job.progress
    return {"id": job.id, "owner": job.owner, "kind": job.kind, "description": job.description, "state": p.state,
            "step": p.step, "total_steps": p.total_steps, "position": position, "submitted_at": job.submitted_at,
            "started_at": p.started_at, "eta_seconds": p.eta_seconds, "error": job.error_message,
            "last_metrics": job.metrics[-1] if job.metrics else None,
            "artifacts": [{"kind": a.kind, "label": a.label, "path": a.path, "step": a.step} for a in job.artifacts]}


def visible_jobs(queue: JobQueue, owner: str, operator: bool) -> list[dict[str, Any]]:
    return [job_row(j, queue.position(j)) for j in queue.jobs(None if operator else owner)]


def jobs_router(engine: Engine, queue: JobQueue) -> APIRouter:
    from core.api.routes import caller

    router = APIRouter(prefix="/kiln/v1", tags=["kiln"])
    flags = engine.settings.flags

    def who(request: Request) -> tuple[str, bool]:
        login = getattr(request.state, "user", None)
        return caller(request), is_operator(flags, login)

    @router.get("/jobs")
    async def jobs(request: Request) -> list[dict[str, Any]]:
        owner, operator = who(request)
        return visible_jobs(queue, owner, operator)

    def act(request: Request, job_id: str, action: str) -> dict[str, Any]:
        owner, operator = who(request)
        job = queue.get(job_id)
        if job is None or (not operator and job.owner != owner):
            raise HTTPException(status_code=404, detail=f"job {job_id!r} not found among your jobs")
        fn = queue.stop if action == "stop" else queue.interrupt
        done = fn(job_id, owner=None if operator else owner)
        return {"id": job_id, "action": action, "accepted": done}

    @router.post("/jobs/{job_id}/cancel")
    async def cancel(request: Request, job_id: str) -> dict[str, Any]:
        return act(request, job_id, "cancel")

    @router.post("/jobs/{job_id}/stop")
    async def stop(request: Request, job_id: str) -> dict[str, Any]:
        """Stop and save: the job keeps what it has (a trainer saves) and ends."""
        return act(request, job_id, "stop")

    return router
