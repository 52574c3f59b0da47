"""Logins for the page and the API: who may use a Kiln that others can reach.

- ``--gradio-auth`` / ``--gradio-auth-path`` lock the page (Gradio's login form).
- ``--api-auth`` locks ``/sdapi/v1/*`` and Kiln's own ``/kiln/v1/*`` with HTTP Basic, as the
  WebUI's flag does; with page logins and no ``--api-auth``, the API takes the same logins, so
  the API is never open while the page is locked.
- Serving beyond loopback (``--listen``, a ``--server-name`` that is not loopback) without any
  login refuses to start unless ``--insecure`` says so: the WebUI serves its whole network
  without asking, and anyone there can read its files and run jobs.

Passwords are compared in constant time and never logged; a login file is read once, at start.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PROTECTED_PREFIXES = ("/sdapi/", "/kiln/")
LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")


@dataclass(frozen=True)
class Logins:
    """user → password; empty means no login is asked."""

    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Logins:
        return cls(dict(pairs))

    def __bool__(self) -> bool:
        return bool(self.passwords)

    def check(self, user: str, password: str) -> bool:
        """Constant time in the password (and the same work for an unknown user)."""
        stored = self.passwords.get(user)
        expected = (stored if stored is not None else "\0unknown user\0").encode("utf-8")
        same = hmac.compare_digest(expected, str(password).encode("utf-8"))
        return same and stored is not None

    def __repr__(self) -> str:  # never print passwords, not even in a traceback
        return f"Logins(users={sorted(self.passwords)})"


def page_and_api_logins(flags: Any) -> tuple[Logins, Logins]:
    """(page logins, API logins) from the flags: the API takes the page's when it has none of its own."""
    page = Logins.of(getattr(flags, "auth", None) or [])
    api = Logins.of(getattr(flags, "api_auth", None) or []) or page
    return page, api


def is_loopback(host: str | None) -> bool:
    if not host:
        return True
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def network_refusal(flags: Any) -> str | None:
    """Why Kiln must not start as asked (served beyond this machine with no login), or None."""
    host = getattr(flags, "host", None)
    if is_loopback(host):
        return None
    page, api = page_and_api_logins(flags)
    if page or api or getattr(flags, "insecure", False):
        return None
    return (f"Kiln would serve everyone who can reach {host} with no login: anyone on the network could "
            "run jobs and read your outputs. Give logins with --gradio-auth USER:PASS or --gradio-auth-path FILE "
            "(the API takes the same ones), or --api-auth USER:PASS for the API alone; or start with --insecure "
            "if this network is yours alone (the WebUI's --listen has no such check).")


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header, None if absent or malformed."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BasicAuthMiddleware:
    """ASGI middleware: HTTP Basic on the API paths; the login name goes to ``request.state.user``.

    Wrong or missing credentials get 401 before anything runs (the body is not even read).
    """

    def __init__(self, app: Any, logins: Logins, prefixes: tuple[str, ...] = PROTECTED_PREFIXES):
        self.app = app
        self.logins = logins
        self.prefixes = prefixes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.logins or not scope.get("path", "").startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        credentials = basic_credentials(headers.get("authorization"))
        if credentials is None or not self.logins.check(*credentials):
            body = json.dumps({"error": "Unauthorized", "detail": "Not authenticated: this API needs a login "
                               "(HTTP Basic, the --api-auth or --gradio-auth logins)"}).encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"www-authenticate", b'Basic realm="Kiln API"')]})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["user"] = credentials[0]
        await self.app(scope, receive, send)
