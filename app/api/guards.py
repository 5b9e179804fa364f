"""The checks every request passes before routing, as one pure-ASGI layer.

In this order: a URL that is not UTF-8 once percent-decoded gets a 400; a request body over
the limit gets a 413 before any work is done; and every response of a request that was
rate-checked carries ``X-RateLimit-Limit``/``-Remaining`` (and ``Retry-After`` on a 429),
whatever produced the response.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.ratelimit import add_rate_limit_headers
from app.api.responses import error_response

_DRAIN_FACTOR = 8  # how much of an oversized body is read and dropped, in max_bytes
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})
_CONTENT_LENGTH = b"content-length"


def _utf8(raw: bytes) -> bool:
    if raw.isascii() and b"%" not in raw:
        return True  # nothing to decode (the usual case): no copy, no decoding
    try:
        unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class RequestGuards:
    """Strict URLs, the request-body size limit and the rate-limit headers.

    A URL must be UTF-8 once percent-decoded: Starlette would quietly turn other bytes into
    U+FFFD, so a client asking for a user id with broken bytes would silently get some
    other user's (empty) list. A body over ``max_bytes`` is refused with a 413 envelope.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket" and not _valid_url(scope):
                await _bad_url(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # Created here, so a copy of the scope made further in still shares this dict.
        state: dict[str, Any] = scope.setdefault("state", {})

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_rate_limit_headers(message, state)
            await send(message)

        if not _valid_url(scope):
            await _bad_url(scope, receive, send_with_limits)
            return
        if scope["method"] in _NO_BODY:
            await self.app(scope, receive, send_with_limits)
            return
        body = await self._read_body(scope, receive, send_with_limits)
        if body is None:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_limits)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once answered (413) or when the client left."""
        declared = None
        for name, value in scope["headers"]:
            if name == _CONTENT_LENGTH:
                declared = value  # the last one, should a client send several
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send, more=more)
                return None
            if not more:
                if not chunks:
                    return chunk  # one message (the usual case): no copy
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, more: bool = True) -> None:
        if more:
            await self._drain(receive)
        response = error_response(
            413,
            "PAYLOAD_TOO_LARGE",
            f"Request body exceeds {self.max_bytes} bytes",
            {"maxBytes": self.max_bytes},
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the rest of the body (up to a bound) before answering.

        Closing a socket that still holds unread data makes the kernel send a reset, and
        the client would lose the 413 it is owed. Past the bound the connection is simply
        closed: nobody needs to upload that much to learn the limit.
        """
        budget = self.max_bytes * _DRAIN_FACTOR
        while budget > 0:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _valid_url(scope: Scope) -> bool:
    return _utf8(scope.get("raw_path") or b"") and _utf8(scope.get("query_string", b""))


async def _bad_url(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(
        400,
        "VALIDATION_ERROR",
        "The request URL is not valid UTF-8 once percent-decoded",
        {"field": "url"},
    )
    await response(scope, receive, send)
