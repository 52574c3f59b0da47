"""Put the API on a FastAPI app: routes plus the error mapping that keeps the server up.

- ``InvalidParameterError`` (a bad value found by Kiln, before or inside the job) → 422, the
  field named, like pydantic's own 422s.
- Any other ``KilnError`` (no checkpoint, unreadable model file...) → 500 with the message,
  as the WebUI answers exceptions in jobs: ``{"error", "detail", "errors"}``.
- Anything else → 500 with the exception's type and text; the server keeps serving.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.api.routes import build_router
from core.errors import InvalidParameterError, KilnError

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

log = logging.getLogger(__name__)


def error_body(exc: BaseException, field: str | None = None) -> dict[str, str | None]:
    message = exc.message if isinstance(exc, KilnError) else f"{type(exc).__name__}: {exc}"
    body: dict[str, str | None] = {"error": type(exc).__name__, "detail": message, "errors": message}
    if field is not None:
        body["field"] = field
    return body


def install_api(app: FastAPI, engine: Engine, queue: JobQueue) -> None:
    """Add /sdapi/v1/... and its error handlers to ``app``."""
    from core.api.networks import networks_router

    app.include_router(networks_router(engine, queue))  # loras, embeddings, hypernetworks, refresh-*
    app.include_router(build_router(engine, queue))
    from core.api.jobs_routes import jobs_router

    app.include_router(jobs_router(engine, queue))  # /kiln/v1/jobs: the caller's queue
    from core.api.tagger_routes import tagger_router

    app.include_router(tagger_router(engine, queue))  # /sdapi/v1/interrogate, /tagger/v1/...
    from core.api.extras_routes import extras_router

    app.include_router(extras_router(engine, queue))  # extra-single-image, extra-batch-images
    from core.api.xyz_routes import scripts_router

    app.include_router(scripts_router(engine.extensions))  # /sdapi/v1/scripts, /script-info: the X/Y/Z plot
    from core.api.train_routes import train_router

    app.include_router(train_router(engine, queue))  # create/train embedding and hypernetwork
    from core.api.system_routes import system_router

    app.include_router(system_router(engine, queue))  # cmd-flags, memory, extensions, unload/reload...
    from core.api.extension_routes import extensions_router, install_extension_routes

    app.include_router(extensions_router(engine))  # /kiln/v1/extensions: what loaded, failed, is disabled
    install_extension_routes(app, engine)  # /kiln/ext/<name>/...: the loaded extensions' own routes

    @app.exception_handler(InvalidParameterError)
    async def invalid_parameter(_request: Request, exc: InvalidParameterError) -> JSONResponse:
        return JSONResponse(status_code=422, content=error_body(exc, exc.field))

    @app.exception_handler(KilnError)
    async def kiln_error(_request: Request, exc: KilnError) -> JSONResponse:
        return JSONResponse(status_code=500, content=error_body(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API error: %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content=error_body(exc))


def create_api_app(engine: Engine, queue: JobQueue) -> FastAPI:
    """A FastAPI app with the API alone (what the API tests use), behind the flags' logins; the
    engine's extensions are loaded first, as create_app in app.py does."""
    from core.api.auth import BasicAuthMiddleware, page_and_api_logins

    engine.load_extensions(queue)
    app = FastAPI(title="Kiln API", description="AUTOMATIC1111 WebUI-compatible REST API", docs_url="/docs")
    install_api(app, engine, queue)
    app.add_middleware(BasicAuthMiddleware, logins=page_and_api_logins(engine.settings.flags)[1])
    from core.api.limits import BodyLimitMiddleware

    app.add_middleware(BodyLimitMiddleware)
    return app
