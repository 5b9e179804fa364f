"""SQL for the sweeper: bounded deletes of expired jobs, their events and old idempotency records.

Each batch first locks its rows with ``FOR UPDATE SKIP LOCKED``, so sweepers in several
replicas take disjoint batches and never wait for each other or for a writer; the deletes
then go by id (``= ANY``), which keeps them on the primary key and ``events.job_id`` index.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ARRAY, Text, TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

# Children of expired parents go first, in bounded batches, so deleting a parent later
# cascades to (almost) nothing: a parent may have up to 1,000 children.
_LOCK_CHILDREN_OF_EXPIRED = text(
    """
    SELECT c.id FROM jobs p JOIN jobs c ON c.parent_job_id = p.id
    WHERE p.expires_at < :before AND p.total_children IS NOT NULL
    LIMIT :batch
    FOR UPDATE OF c SKIP LOCKED
    """
)

_LOCK_EXPIRED = text(
    """
    SELECT id FROM jobs
    WHERE expires_at < :before
    ORDER BY expires_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
    """
)

# A child created or skipped since the first step goes with its parent (ON DELETE CASCADE);
# its events are deleted here explicitly.
_CHILDREN_OF = text("SELECT id FROM jobs WHERE parent_job_id = ANY(:ids)").bindparams(
    bindparam("ids", type_=ARRAY(Text))
)

_DELETE_EVENTS = text("DELETE FROM events WHERE job_id = ANY(:ids)").bindparams(
    bindparam("ids", type_=ARRAY(Text))
)

_DELETE_JOBS = text("DELETE FROM jobs WHERE id = ANY(:ids)").bindparams(
    bindparam("ids", type_=ARRAY(Text))
)

# ctid is stable here: the rows are locked by this very statement.
_DELETE_OLD_IDEMPOTENCY_KEYS = text(
    """
    DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM idempotency_keys
        WHERE created_at < :before
        ORDER BY created_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ))
    """
)


class SweepRepository:
    """One bounded batch per call; each returns how many rows it deleted (0: nothing left)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def delete_children_of_expired(self, before: datetime, batch: int) -> int:
        ids = await self._ids(_LOCK_CHILDREN_OF_EXPIRED, before, batch)
        return await self._delete_jobs(ids, ids)

    async def delete_expired_jobs(self, before: datetime, batch: int) -> int:
        ids = await self._ids(_LOCK_EXPIRED, before, batch)
        if not ids:
            return 0
        children = list((await self.conn.execute(_CHILDREN_OF, {"ids": ids})).scalars())
        return await self._delete_jobs(ids, ids + children)

    async def delete_old_idempotency_keys(self, before: datetime, batch: int) -> int:
        params = {"before": before, "batch": batch}
        return int((await self.conn.execute(_DELETE_OLD_IDEMPOTENCY_KEYS, params)).rowcount)

    async def _ids(self, statement: TextClause, before: datetime, batch: int) -> list[str]:
        result = await self.conn.execute(statement, {"before": before, "batch": batch})
        return list(result.scalars())

    async def _delete_jobs(self, ids: list[str], event_job_ids: list[str]) -> int:
        if not ids:
            return 0
        await self.conn.execute(_DELETE_EVENTS, {"ids": event_job_ids})
        return int((await self.conn.execute(_DELETE_JOBS, {"ids": ids})).rowcount)
