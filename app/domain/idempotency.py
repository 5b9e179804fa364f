"""Idempotent writes: with an ``Idempotency-Key``, a retried write gets its first response.

The key is claimed (a row in ``idempotency_keys``) at the start of the write's transaction
and the response is stored before commit, so a stored response exists exactly when the
write committed. A concurrent request with the same key blocks on that row until the first
commits, then replays; if the first rolls back (a 4xx domain error, a crash), nothing was
stored and the next request with the key runs the write itself. (The header is read in
``app/api/idempotency.py``; the claim and the record run in the unit of work.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.idempotency_repository import IdempotencyRepository, StoredResponse
from app.db.repository import Owner
from app.domain.errors import IdempotencyKeyInUse, IdempotencyKeyReused


class Replay(Exception):  # control flow, not an error
    """Raised inside the write's transaction (rolling it back) to answer with a stored response."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__("idempotent replay")
        self.status_code = stored.status_code
        self.body = stored.body


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """A POST that carries a valid ``Idempotency-Key``."""

    key: str
    request_hash: bytes
    retention: timedelta

    async def claim(self, conn: AsyncConnection, owner: Owner, now: datetime) -> None:
        """Claim the key in this transaction, or raise ``Replay`` / a 409 if it was used."""
        stored = await IdempotencyRepository(conn).claim(
            owner, self.key, self.request_hash, now, now - self.retention
        )
        if stored is None:
            return
        if stored.request_hash != self.request_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used for a different request",
                {"idempotencyKey": self.key},
            )
        if stored.status_code == 0:
            raise IdempotencyKeyInUse(
                "The first request with this Idempotency-Key has not finished",
                {"idempotencyKey": self.key},
            )
        raise Replay(stored)

    async def record(
        self, conn: AsyncConnection, owner: Owner, status_code: int, body: bytes
    ) -> None:
        await IdempotencyRepository(conn).record(owner, self.key, status_code, body)
