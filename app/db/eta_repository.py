"""SQL for the per-key ETA statistics (``eta_stats``), on the caller's connection."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, text, update
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
# A key's statistics with its pending samples (in order), read in one snapshot so each
# sample is counted once: in the row or among the pending, never both. A key known only by
# its samples (no compaction yet) reads as an empty row with them.
_PENDING = """(SELECT jsonb_agg(x.sample ORDER BY x.id) FROM eta_samples x
               WHERE x.app_id = k.app_id AND x.mode = k.mode AND x.eta_key = k.eta_key)"""
_LAST_SAMPLE = """(SELECT max(x.created_at) FROM eta_samples x
                   WHERE x.app_id = k.app_id AND x.mode = k.mode AND x.eta_key = k.eta_key)"""
_WITH_PENDING = f"""
    SELECT k.app_id, k.mode, k.eta_key, coalesce(s.count, 0) AS count,
           coalesce(s.sum_duration, 0) AS sum_duration, s.min_duration, s.max_duration,
           s.default_duration, s.digest, greatest(s.last_updated, {_LAST_SAMPLE}) AS last_updated,
           {_PENDING} AS pending
    FROM keys k LEFT JOIN eta_stats s
      ON s.app_id = k.app_id AND s.mode = k.mode AND s.eta_key = k.eta_key
"""
_KEYS = """
    SELECT app_id, mode, eta_key FROM eta_stats
    WHERE app_id = :app_id AND mode = :mode {one}
    UNION SELECT app_id, mode, eta_key FROM eta_samples
    WHERE app_id = :app_id AND mode = :mode {one}
"""
_GET = text("WITH keys AS (" + _KEYS.format(one="AND eta_key = :eta_key") + ")" + _WITH_PENDING)
_LIST = text("WITH keys AS (" + _KEYS.format(one="") + ")" + _WITH_PENDING + "ORDER BY k.eta_key")
# The no-op ``DO UPDATE`` takes the row lock even when the row exists (compaction only).
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
_TAKE_SAMPLES = text(
    "DELETE FROM eta_samples WHERE app_id = :app_id AND mode = :mode AND eta_key = :eta_key"
    " RETURNING id, sample, created_at"
)
_PENDING_KEYS = text("SELECT DISTINCT app_id, mode, eta_key FROM eta_samples LIMIT :limit")
_DELETE_SAMPLES = text(
    "DELETE FROM eta_samples WHERE app_id = :app_id AND mode = :mode AND eta_key = :eta_key"
)


class EtaRepository:
    """Reads and row-locked writes of one app/mode's ETA statistics."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get(self, owner: Owner, eta_key: str) -> Row | None:
        """The key's statistics; ``pending``: its samples not folded into them yet."""
        params = {"app_id": owner.app_id, "mode": owner.mode, "eta_key": eta_key}
        found = (await self.conn.execute(_GET, params)).mappings().first()
        return _with_pending(found) if found else None

    async def list(self, owner: Owner) -> list[Row]:
        params = {"app_id": owner.app_id, "mode": owner.mode}
        return [_with_pending(r) for r in (await self.conn.execute(_LIST, params)).mappings()]

    async def take_samples(self, owner: Owner, eta_key: str) -> builtins.list[Row]:
        """Delete the key's pending samples in the caller's transaction and return them in
        id order (a concurrent compaction's are row-locked: this one waits, then skips
        them)."""
        key = {"app_id": owner.app_id, "mode": owner.mode, "eta_key": eta_key}
        taken = [dict(r) for r in (await self.conn.execute(_TAKE_SAMPLES, key)).mappings()]
        return sorted(taken, key=lambda r: int(r["id"]))

    async def lock(self, owner: Owner, eta_key: str, empty: dict[str, Any], now: datetime) -> Row:
        """Create the key's row if missing and lock it until commit; returns the row."""
        params = _blank(owner, eta_key, empty, now)
        return dict((await self.conn.execute(_LOCK, params)).mappings().one())

    async def store(self, owner: Owner, eta_key: str, values: Row) -> None:
        """Write a locked key's new statistics."""
        stmt = update(eta_stats).where(_key(owner, eta_key)).values(**values)
        await self.conn.execute(stmt)

    async def pending_keys(self, limit: int) -> builtins.list[tuple[Owner, str]]:
        """Keys of any app with samples not folded yet."""
        rows = (await self.conn.execute(_PENDING_KEYS, {"limit": limit})).all()
        return [(Owner(r.app_id, r.mode), r.eta_key) for r in rows]

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
        params = {"app_id": owner.app_id, "mode": owner.mode, "eta_key": eta_key}
        samples = (await self.conn.execute(_DELETE_SAMPLES, params)).rowcount
        result = await self.conn.execute(delete(eta_stats).where(_key(owner, eta_key)))
        return bool(result.rowcount) or bool(samples)


def _with_pending(row: Any) -> Row:
    out = dict(row)
    out["pending"] = out["pending"] or []
    return out
