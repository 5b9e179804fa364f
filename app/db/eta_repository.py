"""SQL for the per-key ETA statistics (``eta_stats``), on the caller's connection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.repository import Owner, Row
from app.db.tables import eta_stats


def _key(owner: Owner, eta_key: str) -> Any:
    return (
        (eta_stats.c.app_id == owner.app_id)
        & (eta_stats.c.mode == owner.mode)
        & (eta_stats.c.eta_key == eta_key)
    )


def _blank(owner: Owner, eta_key: str, digest: dict[str, Any], now: datetime) -> Row:
    return {
        "app_id": owner.app_id,
        "mode": owner.mode,
        "eta_key": eta_key,
        "count": 0,
        "sum_duration": 0.0,
        "digest": digest,
        "last_updated": now,
    }


# Built once (bound by name), so each execution hits the compiled statement cache.
_BY_KEY = (
    (eta_stats.c.app_id == bindparam("app_id"))
    & (eta_stats.c.mode == bindparam("mode"))
    & (eta_stats.c.eta_key == bindparam("eta_key"))
)
_GET = select(eta_stats).where(_BY_KEY)
# The no-op ``DO UPDATE`` takes the row lock even when the row exists.
_LOCK = (
    pg_insert(eta_stats)
    .values(
        {c: bindparam(c) for c in ("app_id", "mode", "eta_key", "count", "sum_duration")}
        | {"digest": bindparam("digest", type_=eta_stats.c.digest.type)}
        | {"last_updated": bindparam("last_updated")}
    )
    .on_conflict_do_update(
        index_elements=["app_id", "mode", "eta_key"], set_={"count": eta_stats.c.count}
    )
    .returning(eta_stats)
)


class EtaRepository:
    """Reads and row-locked writes of one app/mode's ETA statistics."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get(self, owner: Owner, eta_key: str) -> Row | None:
        params = {"app_id": owner.app_id, "mode": owner.mode, "eta_key": eta_key}
        found = (await self.conn.execute(_GET, params)).mappings().first()
        return dict(found) if found else None

    async def list(self, owner: Owner) -> list[Row]:
        stmt = (
            select(eta_stats)
            .where(eta_stats.c.app_id == owner.app_id, eta_stats.c.mode == owner.mode)
            .order_by(eta_stats.c.eta_key)
        )
        return [dict(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def lock(self, owner: Owner, eta_key: str, empty: dict[str, Any], now: datetime) -> Row:
        """Create the key's row if missing and lock it until commit; returns the row.

        The no-op ``DO UPDATE`` takes the row lock even when the row exists, so concurrent
        completions of one key serialise here and every count stays exact.
        """
        params = _blank(owner, eta_key, empty, now)
        return dict((await self.conn.execute(_LOCK, params)).mappings().one())

    async def set_default(
        self, owner: Owner, eta_key: str, default_ms: int, empty: dict[str, Any], now: datetime
    ) -> None:
        """Record the latest ``estimatedDuration`` given for the key (creating the row)."""
        values = {**_blank(owner, eta_key, empty, now), "default_duration": default_ms}
        stmt = pg_insert(eta_stats).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["app_id", "mode", "eta_key"],
            set_={"default_duration": default_ms, "last_updated": now},
        )
        await self.conn.execute(stmt)

    async def delete(self, owner: Owner, eta_key: str) -> bool:
        result = await self.conn.execute(delete(eta_stats).where(_key(owner, eta_key)))
        return bool(result.rowcount)
