"""Request checks that run before routing."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.responses import error_response


def _utf8(raw: bytes) -> bool:
    if raw.isascii() and b"%" not in raw:
        return True  # nothing to decode (the usual case): no copy, no decoding
    try:
        unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class StrictUrlMiddleware:
    """400 for a path or query string that is not UTF-8 once percent-decoded.

    Starlette would quietly turn such bytes into U+FFFD, so a client asking for a user id
    with broken bytes would silently get some other user's (empty) list.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not (
            _utf8(scope.get("raw_path") or b"") and _utf8(scope.get("query_string", b""))
        ):
            response = error_response(
                400,
                "VALIDATION_ERROR",
                "The request URL is not valid UTF-8 once percent-decoded",
                {"field": "url"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
