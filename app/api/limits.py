"""A cap on concurrent SSE connections per API key (per replica, in memory)."""

from __future__ import annotations

from fastapi import Request

from app.api.ratelimit import RETRY_AFTER_KEY, RateLimited
from app.domain.keys import Principal

SSE_RETRY_AFTER_SECONDS = 5


class ConnectionLimiter:
    """Counts open connections per key id; ``acquire`` fails once a key holds ``max_per_key``."""

    def __init__(self, max_per_key: int) -> None:
        self.max_per_key = max_per_key
        self._open: dict[str, int] = {}

    def acquire(self, key_id: str) -> bool:
        """Take a slot for ``key_id``; False (and nothing taken) when the key is at its cap."""
        count = self._open.get(key_id, 0)
        if count >= self.max_per_key:
            return False
        self._open[key_id] = count + 1
        return True

    def release(self, key_id: str) -> None:
        """Give back a slot taken by a successful ``acquire``."""
        count = self._open.get(key_id, 0) - 1
        if count > 0:
            self._open[key_id] = count
        else:
            self._open.pop(key_id, None)

    def open_connections(self, key_id: str) -> int:
        return self._open.get(key_id, 0)


class SseSlot:
    """One held SSE slot. ``release`` is idempotent, so a stream may call it from its
    generator's ``finally`` and from the response's background task, whichever runs."""

    def __init__(self, limiter: ConnectionLimiter, key_id: str) -> None:
        self._limiter = limiter
        self._key_id = key_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter.release(self._key_id)


def acquire_sse_slot(request: Request, principal: Principal) -> SseSlot:
    """Take an SSE slot for the caller's key, or raise 429 ``RATE_LIMITED`` with ``Retry-After``.

    Call it before returning the stream (a 429 cannot be sent once the stream started),
    and release the slot when the stream ends.
    """
    limiter: ConnectionLimiter = request.app.state.sse_limiter
    if not limiter.acquire(principal.key_id):
        setattr(request.state, RETRY_AFTER_KEY, SSE_RETRY_AFTER_SECONDS)
        raise RateLimited(
            f"Too many open SSE connections for this API key (at most {limiter.max_per_key})",
            {"maxConnections": limiter.max_per_key, "retryAfter": SSE_RETRY_AFTER_SECONDS},
        )
    return SseSlot(limiter, principal.key_id)
