"""Size limits at the door: a request body larger than the limit is refused (413) before it is read
whole, so one client cannot make the server hold (and echo back) tens of megabytes.

The limit fits an img2img request with a few large pictures (base64 PNG); prompts and job sizes
have their own limits in core.generation.params.
"""

from __future__ import annotations

import json
from typing import Any

MAX_BODY_BYTES = 32 * 1024 * 1024
LIMITED_PREFIXES = ("/sdapi/", "/kiln/")


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES, prefixes: tuple[str, ...] = LIMITED_PREFIXES):
        self.app = app
        self.max_bytes = max_bytes
        self.prefixes = prefixes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        mib = self.max_bytes / (1024 * 1024)
        body = json.dumps({"error": "RequestTooLarge", "detail": f"the request is larger than {mib:g} MiB",
                           "errors": "send smaller pictures (JPEG or WebP), or fewer at once"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
