"""Caps on concurrent SSE connections per API key and per user (per replica, in memory)."""

from __future__ import annotations

from fastapi import Request

from app.api.ratelimit import RETRY_AFTER_KEY, RateLimited
from app.domain.keys import Principal

SSE_RETRY_AFTER_SECONDS = 5


class ConnectionLimiter:
    """Counts open connections per key id and per (key id, user id).

    A public key is shared by every install of an app, so the per-key cap is a guard for the
    replica, set high; the per-user cap stops one user (or a client reconnecting in a loop)
    from holding many streams.
    """

    def __init__(self, max_per_key: int, max_per_user: int | None = None) -> None:
        self.max_per_key = max_per_key
        self.max_per_user = max_per_user if max_per_user is not None else max_per_key
        self._open: dict[str, int] = {}

    @staticmethod
    def _user_scope(key_id: str, user_id: str) -> str:
        return f"{key_id}\x00{user_id}"

    def refusal(self, key_id: str, user_id: str | None = None) -> str | None:
        """Which cap a new connection would exceed (``"key"`` or ``"user"``), else None."""
        if self._open.get(key_id, 0) >= self.max_per_key:
            return "key"
        if user_id is not None:
            if self._open.get(self._user_scope(key_id, user_id), 0) >= self.max_per_user:
                return "user"
        return None

    def acquire(self, key_id: str, user_id: str | None = None) -> bool:
        """Take a slot; False (and nothing taken) when a cap is reached."""
        if self.refusal(key_id, user_id) is not None:
            return False
        for scope in self._scopes(key_id, user_id):
            self._open[scope] = self._open.get(scope, 0) + 1
        return True

    def release(self, key_id: str, user_id: str | None = None) -> None:
        """Give back a slot taken by a successful ``acquire`` with the same arguments."""
        for scope in self._scopes(key_id, user_id):
            count = self._open.get(scope, 0) - 1
            if count > 0:
                self._open[scope] = count
            else:
                self._open.pop(scope, None)

    def _scopes(self, key_id: str, user_id: str | None) -> list[str]:
        if user_id is None:
            return [key_id]
        return [key_id, self._user_scope(key_id, user_id)]

    def open_connections(self, key_id: str, user_id: str | None = None) -> int:
        scope = key_id if user_id is None else self._user_scope(key_id, user_id)
        return self._open.get(scope, 0)


class SseSlot:
    """One held SSE slot. ``release`` is idempotent, so a stream may call it from its
    generator's ``finally`` and from the response's background task, whichever runs."""

    def __init__(self, limiter: ConnectionLimiter, key_id: str, user_id: str | None = None) -> None:
        self._limiter = limiter
        self._key_id = key_id
        self._user_id = user_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter.release(self._key_id, self._user_id)


def acquire_sse_slot(request: Request, principal: Principal, user_id: str | None = None) -> SseSlot:
    """Take an SSE slot for the caller's key (and user), or raise 429 ``RATE_LIMITED`` with
    ``Retry-After``.

    Call it before returning the stream (a 429 cannot be sent once the stream started),
    and release the slot when the stream ends.
    """
    limiter: ConnectionLimiter = request.app.state.sse_limiter
    refused = limiter.refusal(principal.key_id, user_id)
    if refused is not None or not limiter.acquire(principal.key_id, user_id):
        setattr(request.state, RETRY_AFTER_KEY, SSE_RETRY_AFTER_SECONDS)
        cap = limiter.max_per_user if refused == "user" else limiter.max_per_key
        scope = "for this user and API key" if refused == "user" else "for this API key"
        raise RateLimited(
            f"Too many open SSE connections {scope} (at most {cap})",
            {
                "maxConnections": cap,
                "scope": refused or "key",
                "retryAfter": SSE_RETRY_AFTER_SECONDS,
            },
        )
    return SseSlot(limiter, principal.key_id, user_id)
