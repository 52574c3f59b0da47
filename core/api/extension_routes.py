"""The extensions over HTTP: Kiln's full report (/kiln/v1/extensions) and the routes the loaded
extensions add (/kiln/ext/<name>/...). GET /sdapi/v1/extensions keeps the WebUI's shape
(core.api.system_routes.list_extensions)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI

if TYPE_CHECKING:
    from core.engine import Engine

log = logging.getLogger(__name__)


def extensions_router(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/kiln/v1", tags=["kiln"])

    @router.get("/extensions")
    def extensions() -> list[dict[str, Any]]:
        """Every folder of extensions/: loaded, failed (with the error and where), disabled (by
        which flag or setting) or not run (a WebUI extension, and Kiln's built-in replacement)."""
        return [record.to_json() for record in engine.extensions.records]

    return router


def install_extension_routes(app: FastAPI, engine: Engine) -> None:
    """Add each loaded extension's routes. One FastAPI refuses (an endpoint whose signature it
    cannot read) is reported on the extension's record and left out; the others are served."""
    for route in engine.extensions.routes:
        try:
            app.add_api_route(route.path, route.endpoint, methods=list(route.methods),
                              tags=[f"extension: {route.extension}"])
        except Exception as exc:  # the extension's endpoint, not Kiln's: report it, serve the rest
            problem = f"route {route.path} not served: {type(exc).__name__}: {exc}"
            engine.extensions.report_problem(route.extension, problem)
            log.warning("extension %s: %s", route.extension, problem)
