"""The request-body size limit, as an ASGI middleware in front of every route."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.responses import error_response

_DRAIN_FACTOR = 8  # how much of an oversized body is read and dropped, in max_bytes


class BodyLimitMiddleware:
    """Reject request bodies over ``max_bytes`` with a 413 envelope before any work is done."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send, more=message.get("more_body", False))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

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
