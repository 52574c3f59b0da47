"""The WebUI's training routes: /sdapi/v1/create/embedding, /create/hypernetwork, /train/embedding,
/train/hypernetwork. Bodies are the WebUI's argument names (core/training/ti_args.py); answers
are its ``{"info": ...}`` texts. Training runs as one queue job of the caller (kind "train":
its progress, loss and previews show in /kiln/v1/jobs and the page) and the request returns
when it ends, as the WebUI's does; Interrupt or Stop end it with the progress saved. Bad
fields answer 422 naming the field, other failures 500 with the message (the WebUI answered
errors as 200 with the text inside ``info``, which clients cannot tell from success).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Request
from starlette.concurrency import run_in_threadpool

from core.training import ti_args, ti_jobs

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue


def train_router(engine: Engine, queue: JobQueue) -> APIRouter:
    from core.api.routes import caller

    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])

    async def run_job(request: Request, fn: Any, description: str, kind: str = "train") -> Any:
        import asyncio

        job = queue.submit(fn, description=description, owner=caller(request), kind=kind)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        job.add_done_callback(lambda _job: loop.call_soon_threadsafe(done.set))
        await done.wait()
        return job.wait(0)

    @router.post("/create/embedding")
    async def create_embedding(request: Request, args: dict[str, Any] = Body(...)) -> dict[str, str]:
        v = ti_args.create_embedding_args(args)
        fn = ti_jobs.create_embedding_job(engine, v["name"], v["num_vectors_per_token"], v["overwrite_old"],
                                          v["init_text"])
        # short: a generation-sized job (it runs at a trainer's pause points too)
        filename = await run_job(request, fn, f"create embedding {v['name']}", kind="generate")
        return {"info": f"create embedding filename: {filename}"}

    @router.post("/create/hypernetwork")
    async def create_hypernetwork(args: dict[str, Any] = Body(...)) -> dict[str, str]:
        spec = ti_args.hypernetwork_spec(args)
        filename = await run_in_threadpool(ti_jobs.create_hypernetwork_file, engine, spec)
        return {"info": f"create hypernetwork filename: {filename}"}

    @router.post("/train/embedding")
    async def train_embedding(request: Request, args: dict[str, Any] = Body(...)) -> dict[str, str]:
        name, options = ti_args.embedding_args(args)
        result = await run_job(request, ti_jobs.train_embedding_job(engine, name, options), f"train embedding {name}")
        return {"info": f"train embedding complete: filename: {result.path} error: None"}

    @router.post("/train/hypernetwork")
    async def train_hypernetwork(request: Request, args: dict[str, Any] = Body(...)) -> dict[str, str]:
        name, options = ti_args.hypernetwork_args(args)
        result = await run_job(request, ti_jobs.train_hypernetwork_job(engine, name, options),
                               f"train hypernetwork {name}")
        return {"info": f"train hypernetwork complete: filename: {result.path} error: None"}

    return router
