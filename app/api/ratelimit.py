"""Per-key request rate limits: an in-process GCRA (a token bucket without a timer).

Each replica keeps its own buckets in memory, so a check costs no database round trip; with
N replicas behind a load balancer a key gets up to N times the configured rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import Message

from app.domain.errors import RateLimited
from app.settings import Settings

STATE_KEY = "rate_limit"  # where the request's decision is kept in ``scope["state"]``
RETRY_AFTER_KEY = "retry_after"  # a 429 raised elsewhere (e.g. the SSE cap) may set this
# For the OpenAPI document: headers on every response to an authenticated request.
OPENAPI_HEADERS: dict[str, Any] = {
    "X-RateLimit-Limit": {
        "description": "Requests the key may send at once (its bucket size)",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests the key can still send at once",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}
_EPSILON = 1e-9  # float slack, so exactly ``burst`` requests fit in one instant


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check, and what the response headers report."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until the next request would be allowed; 0 when allowed

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds, never below 1."""
        return str(max(1, math.ceil(self.retry_after)))


class RateLimiter:
    """One bucket per key id: ``burst`` requests at once, refilled at ``per_second``.

    GCRA keeps one float per key (its theoretical arrival time). Buckets exist only for
    keys that authenticated, so the table is bounded by the number of API keys.
    """

    def __init__(
        self,
        per_second: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = burst
        self.interval = 1.0 / per_second
        self.tolerance = (burst - 1) * self.interval
        self.clock = clock
        self.max_keys = max_keys
        self._tat: dict[str, float] = {}

    def check(self, key_id: str) -> Decision:
        """Take one token from ``key_id``'s bucket if there is one (a refusal takes none)."""
        now = self.clock()
        tat = max(self._tat.get(key_id, now), now)
        if tat - now > self.tolerance + _EPSILON:
            return Decision(False, self.limit, 0, tat - self.tolerance - now)
        new_tat = tat + self.interval
        if key_id not in self._tat and len(self._tat) >= self.max_keys:
            self._forget_full_buckets(now)
        self._tat[key_id] = new_tat
        used = (new_tat - now) / self.interval
        remaining = max(0, min(self.limit, math.floor(self.limit - used + _EPSILON)))
        return Decision(True, self.limit, remaining, 0.0)

    def _forget_full_buckets(self, now: float) -> None:
        # A bucket whose arrival time has passed is full: forgetting it changes nothing.
        self._tat = {k: t for k, t in self._tat.items() if t > now}


def limiter_from_settings(settings: Settings) -> RateLimiter | None:
    """The configured limiter, or None when rate limits are off."""
    if not settings.rate_limit_enabled:
        return None
    return RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)


def enforce(state: Any, limiter: RateLimiter | None, key_id: str) -> None:
    """Check ``key_id``, remember the decision for the response headers, raise 429 if over."""
    if limiter is None:
        return
    decision = limiter.check(key_id)
    setattr(state, STATE_KEY, decision)
    if not decision.allowed:
        raise RateLimited(
            f"Rate limit exceeded for this API key; retry in {decision.retry_after_header} s",
            {"retryAfter": int(decision.retry_after_header), "limit": decision.limit},
        )


def add_rate_limit_headers(message: Message, state: dict[str, Any]) -> None:
    """Adds ``X-RateLimit-Limit``/``-Remaining`` to the response start ``message`` of a
    request that was rate-checked, and ``Retry-After`` to a 429 that has none."""
    decision = state.get(STATE_KEY)
    if decision is None and message["status"] != 429:
        return  # not rate-checked (limits off, or answered before authentication)
    headers = MutableHeaders(scope=message)
    if isinstance(decision, Decision):
        headers["X-RateLimit-Limit"] = str(decision.limit)
        headers["X-RateLimit-Remaining"] = str(decision.remaining)
    if message["status"] == 429 and "retry-after" not in headers:
        if RETRY_AFTER_KEY in state:
            headers["Retry-After"] = str(max(1, int(state[RETRY_AFTER_KEY])))
        elif isinstance(decision, Decision):
            headers["Retry-After"] = decision.retry_after_header
