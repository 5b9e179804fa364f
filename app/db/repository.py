"""The only code that speaks SQL. Every method runs on the caller's connection/transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ARRAY, Text, and_, bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import api_keys, jobs

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose data a request may touch: one app in one mode."""

    app_id: str
    mode: str


class UniqueViolation(Exception):
    """An insert hit a unique constraint."""


def _owned(owner: Owner, now: datetime) -> Any:
    return and_(
        jobs.c.app_id == owner.app_id,
        jobs.c.mode == owner.mode,
        jobs.c.expires_at > now,
    )


_APPEND_EVENTS = text(
    """
    WITH s AS (
        INSERT INTO event_streams AS es (app_id, mode, user_id, last_seq)
        VALUES (:app_id, :mode, :user_id, :n)
        ON CONFLICT (app_id, mode, user_id) DO UPDATE SET last_seq = es.last_seq + :n
        RETURNING stream_id, last_seq
    )
    INSERT INTO events (stream_id, seq, job_id, event, payload, created_at)
    SELECT s.stream_id, s.last_seq - :n + e.ord, e.job_id, e.event, e.payload::jsonb, :now
    FROM s, unnest(:job_ids, :names, :payloads) WITH ORDINALITY AS e(job_id, event, payload, ord)
    RETURNING stream_id, seq
    """
).bindparams(
    bindparam("job_ids", type_=ARRAY(Text)),
    bindparam("names", type_=ARRAY(Text)),
    bindparam("payloads", type_=ARRAY(Text)),
)

_CANCEL_CHILDREN = text(
    """
    WITH old AS (
        SELECT id, status FROM jobs
        WHERE parent_job_id = :parent_id AND status IN ('pending', 'running')
        ORDER BY id
        FOR UPDATE
    )
    UPDATE jobs AS j
    SET status = 'cancelled', updated_at = :now, completed_at = :now,
        estimated_completion_at = NULL
    FROM old WHERE j.id = old.id
    RETURNING j.*, old.status AS old_status
    """
)


class Repository:
    """Queries over one connection. Callers own the transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    # --- jobs -------------------------------------------------------------------------

    async def get_job(self, owner: Owner, job_id: str, now: datetime) -> Row | None:
        stmt = select(jobs).where(jobs.c.id == job_id, _owned(owner, now))
        row = (await self.conn.execute(stmt)).mappings().first()
        return dict(row) if row else None

    async def lock_plain_job(self, owner: Owner, job_id: str, now: datetime) -> Row | None:
        """Lock and return the job if it is not a child (children lock their parent first)."""
        stmt = (
            select(jobs)
            .where(jobs.c.id == job_id, jobs.c.parent_job_id.is_(None), _owned(owner, now))
            .with_for_update()
        )
        row = (await self.conn.execute(stmt)).mappings().first()
        return dict(row) if row else None

    async def lock_job(self, job_id: str, *, shared: bool = False) -> Row | None:
        """Lock a job row by id alone (used for a parent whose ownership is already known)."""
        stmt = select(jobs).where(jobs.c.id == job_id).with_for_update(read=shared)
        row = (await self.conn.execute(stmt)).mappings().first()
        return dict(row) if row else None

    async def insert_job(self, values: Row) -> Row:
        """Insert a job; a child whose (parent, index) slot is taken raises UniqueViolation."""
        stmt = pg_insert(jobs).values(**values)
        if values.get("parent_job_id") is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=["parent_job_id", "child_index"])
        row = (await self.conn.execute(stmt.returning(jobs))).mappings().first()
        if row is None:
            raise UniqueViolation(f"{values['parent_job_id']}[{values['child_index']}]")
        return dict(row)

    async def update_job(self, job_id: str, values: Row) -> Row:
        stmt = update(jobs).where(jobs.c.id == job_id).values(**values).returning(jobs)
        return dict((await self.conn.execute(stmt)).mappings().one())

    async def cancel_unfinished_children(self, parent_id: str, now: datetime) -> list[Row]:
        """Cancel every unfinished child; rows carry ``old_status``."""
        result = await self.conn.execute(_CANCEL_CHILDREN, {"parent_id": parent_id, "now": now})
        return [dict(r) for r in result.mappings()]

    async def list_jobs(
        self, owner: Owner, user_id: str, before_id: str | None, limit: int, now: datetime
    ) -> list[Row]:
        stmt = select(jobs).where(jobs.c.user_id == user_id, _owned(owner, now))
        if before_id is not None:
            stmt = stmt.where(jobs.c.id < before_id)
        stmt = stmt.order_by(jobs.c.id.desc()).limit(limit)
        return [dict(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def list_children(self, parent_id: str) -> list[Row]:
        stmt = select(jobs).where(jobs.c.parent_job_id == parent_id).order_by(jobs.c.child_index)
        return [dict(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def find_child(self, parent_id: str, child_index: int) -> Row | None:
        stmt = select(jobs).where(
            jobs.c.parent_job_id == parent_id, jobs.c.child_index == child_index
        )
        row = (await self.conn.execute(stmt)).mappings().first()
        return dict(row) if row else None

    # --- events -----------------------------------------------------------------------

    async def append_events(
        self,
        owner: Owner,
        user_id: str,
        items: Sequence[tuple[str, str, dict[str, Any]]],
        now: datetime,
    ) -> tuple[int, int]:
        """Append ``(event, job_id, payload)`` items to the user's stream, in order.

        The stream counter row stays locked until commit, so a stream's events become
        visible in sequence order with no gaps. Returns ``(stream_id, last_seq)``.
        """
        params = {
            "app_id": owner.app_id,
            "mode": owner.mode,
            "user_id": user_id,
            "n": len(items),
            "job_ids": [job_id for _, job_id, _ in items],
            "names": [name for name, _, _ in items],
            "payloads": [orjson.dumps(payload).decode() for _, _, payload in items],
            "now": now,
        }
        rows = (await self.conn.execute(_APPEND_EVENTS, params)).all()
        return rows[-1][0], max(r[1] for r in rows)

    # --- keys -------------------------------------------------------------------------

    async def find_key(self, key_hash: bytes) -> Row | None:
        stmt = select(api_keys).where(api_keys.c.key_hash == key_hash)
        row = (await self.conn.execute(stmt)).mappings().first()
        return dict(row) if row else None

    async def insert_key(self, values: Row) -> None:
        await self.conn.execute(insert(api_keys).values(**values))

    async def list_keys(self, app_id: str | None) -> list[Row]:
        stmt = select(api_keys).order_by(api_keys.c.app_id, api_keys.c.created_at)
        if app_id is not None:
            stmt = stmt.where(api_keys.c.app_id == app_id)
        return [dict(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        stmt = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return (await self.conn.execute(stmt)).rowcount == 1

    async def database_now(self) -> datetime:
        return (await self.conn.execute(select(func.now()))).scalar_one()
