"""SQL for idempotency records (table ``idempotency_keys``), on the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.repository import Owner

# Claim the key: a new row, or take over a record older than the retention window. A
# concurrent claim of the same key blocks on the primary key until this transaction ends;
# ON CONFLICT DO UPDATE locks the existing row even when its WHERE is false.
_CLAIM = text(
    """
    INSERT INTO idempotency_keys AS k
        (app_id, mode, key, request_hash, status_code, response, created_at)
    VALUES (:app_id, :mode, :key, :request_hash, 0, ''::bytea, :now)
    ON CONFLICT (app_id, mode, key) DO UPDATE
        SET request_hash = EXCLUDED.request_hash, status_code = 0, response = ''::bytea,
            created_at = EXCLUDED.created_at
        WHERE k.created_at < :cutoff
    RETURNING 1
    """
)

_FIND = text(
    """
    SELECT request_hash, status_code, response FROM idempotency_keys
    WHERE app_id = :app_id AND mode = :mode AND key = :key
    """
)

_RECORD = text(
    """
    UPDATE idempotency_keys SET status_code = :status_code, response = :response
    WHERE app_id = :app_id AND mode = :mode AND key = :key
    """
)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    request_hash: bytes
    status_code: int
    body: bytes


class IdempotencyRepository:
    """Queries over one connection. Callers own the transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def claim(
        self, owner: Owner, key: str, request_hash: bytes, now: datetime, cutoff: datetime
    ) -> StoredResponse | None:
        """Claim ``key`` for this transaction; None when claimed, else the live record."""
        params = {"app_id": owner.app_id, "mode": owner.mode, "key": key}
        claimed = await self.conn.execute(
            _CLAIM, {**params, "request_hash": request_hash, "now": now, "cutoff": cutoff}
        )
        if claimed.first() is not None:
            return None
        row = (await self.conn.execute(_FIND, params)).one()
        return StoredResponse(bytes(row.request_hash), row.status_code, bytes(row.response))

    async def record(self, owner: Owner, key: str, status_code: int, body: bytes) -> None:
        """Store the response of the write that claimed ``key`` (same transaction)."""
        await self.conn.execute(
            _RECORD,
            {
                "app_id": owner.app_id,
                "mode": owner.mode,
                "key": key,
                "status_code": status_code,
                "response": body,
            },
        )
