"""Caps on concurrent SSE connections per API key and per user (per replica, in memory)."""

from __future__ import annotations

from fastapi import Request

from app.api.ratelimit import RETRY_AFTER_KEY
from app.domain.errors import RateLimited
from app.domain.keys import Principal
from app.realtime.connections import ConnectionLimiter, SseSlot
from app.state import app_state

SSE_RETRY_AFTER_SECONDS = 5


def acquire_sse_slot(request: Request, principal: Principal, user_id: str | None = None) -> SseSlot:
    """Take an SSE slot for the caller's key (and user), or raise 429 ``RATE_LIMITED`` with
    ``Retry-After`` when the key's cap for this replica is reached.

    Call it before returning the stream (a 429 cannot be sent once the stream started),
    and release the slot when the stream ends.
    """
    limiter: ConnectionLimiter = app_state(request).sse_limiter
    slot = limiter.acquire(principal.key_id, user_id)
    if slot is None:
        setattr(request.state, RETRY_AFTER_KEY, SSE_RETRY_AFTER_SECONDS)
        raise RateLimited(
            f"Too many open SSE connections for this API key (at most {limiter.max_per_key})",
            {
                "maxConnections": limiter.max_per_key,
                "scope": "key",
                "retryAfter": SSE_RETRY_AFTER_SECONDS,
            },
        )
    return slot
