"""The web server as the flags ask: uvicorn options (TLS, keep-alive, log level), CORS, the API
request log (--api-log), the page theme (--theme) and opening the browser (--autolaunch).

ASGI and the standard library only (no gradio, no torch), so each piece is tested on its own.
"""

from __future__ import annotations

import logging
import os
import time
import webbrowser
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from core.cli import Flags

api_log = logging.getLogger("kiln.api")
log = logging.getLogger("kiln")

API_PREFIX = "/sdapi/"


def uvicorn_options(flags: Flags) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that depend on the flags."""
    options: dict[str, Any] = {"log_level": "debug" if flags.loglevel == "DEBUG" else "warning"}
    if flags.tls:
        options["ssl_keyfile"] = str(flags.tls_keyfile)
        options["ssl_certfile"] = str(flags.tls_certfile)
    if flags.timeout_keep_alive is not None:
        options["timeout_keep_alive"] = flags.timeout_keep_alive
    if flags.subpath:
        options["root_path"] = flags.subpath  # so /docs finds /openapi.json behind the proxy
    return options


def route_path(scope: dict) -> str:
    """The request's path inside Kiln, without the --subpath prefix (uvicorn puts it in front)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return path or "/"


def install_web_flags(app: Any, flags: Flags) -> None:
    """Add the middlewares the flags ask for to the FastAPI ``app`` (before Gradio is mounted, so
    Gradio sees Kiln's CORS policy and adds none of its own)."""
    if flags.cors_allow_origins or flags.cors_allow_origins_regex:
        from fastapi.middleware.cors import CORSMiddleware

        # "*" with credentials would let any web page act with a logged-in user's cookie.
        any_origin = "*" in flags.cors_allow_origins
        app.add_middleware(CORSMiddleware, allow_origins=flags.cors_allow_origins,
                           allow_origin_regex=flags.cors_allow_origins_regex, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=not any_origin)
    if flags.theme and not flags.nowebui:
        app.add_middleware(ThemeRedirect, theme=flags.theme)
    if flags.api_log:
        app.add_middleware(ApiLog)


class ApiLog:
    """Log one line per API request: client, method, path, status, seconds. Never the query string,
    the body or any header (Authorization stays out of the log)."""

    def __init__(self, app: Any, logger: logging.Logger = api_log):
        self.app = app
        self.logger = logger

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not route_path(scope).startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering
        start = time.perf_counter()

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            client = scope.get("client") or ("-", 0)
            self.logger.info("API %s %s %s %d %.3fs", client[0], scope["method"], route_path(scope), status,
                             time.perf_counter() - start)


class ThemeRedirect:
    """``--theme dark``: the page at "/" opens as "/?__theme=dark" (Gradio's own switch; a theme
    picked in Gradio's settings panel still wins). The redirect is relative, so it works behind a
    proxy under --subpath too."""

    def __init__(self, app: Any, theme: str):
        self.app = app
        self.theme = theme

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and route_path(scope) == "/":
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            if not any(key == "__theme" for key, _ in query):
                location = "?" + urlencode([*query, ("__theme", self.theme)])
                await send({"type": "http.response.start", "status": 307,
                            "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


def open_browser_when_serving(server: Any, url: str, open_browser: Callable[[str], Any] | None = None,
                              environ: Mapping[str, str] = os.environ, poll: float = 0.1) -> bool:
    """``--autolaunch``: once ``server`` (a uvicorn.Server) answers, open ``url`` in the system's
    browser. Never under CI (the ``CI`` variable set), where no one is there to look. True if opened."""
    if environ.get("CI"):
        log.info("--autolaunch: CI is set; not opening a browser")
        return False
    while not server.started and not server.should_exit:
        time.sleep(poll)
    if not server.started:
        return False
    (open_browser or webbrowser.open)(url)
    log.info("--autolaunch: opened %s in the system's browser", url)
    return True


class PageScript:
    """Put ``script()`` (an HTML string; "" or None: nothing) right after ``<head>`` of the page at
    "/" — before Gradio's own scripts run. The UI's language choice uses it (ui/i18n.py)."""

    def __init__(self, app: Any, script: Callable[[], str | None]):
        self.app = app
        self.script = script

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or route_path(scope) != "/":
            await self.app(scope, receive, send)
            return
        script = self.script()
        if not script:
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        chunks: list[bytes] = []

        async def send_with_script(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if message["status"] != 200 or not headers.get(b"content-type", b"").startswith(b"text/html"):
                    await send(message)  # a redirect, an error, not the page: as it is
                    return
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks).replace(b"<head>", b"<head>" + script.encode("utf-8"), 1)
            headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode("latin-1")))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_with_script)
