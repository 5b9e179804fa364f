"""The event log's reads for one SSE connection, and the pruning of expired events (the writes
of events are the repository's)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.repository import Owner

_STREAM = text(
    "SELECT stream_id, last_seq FROM event_streams "
    "WHERE app_id = :app_id AND mode = :mode AND user_id = :user_id"
)
_OLDEST = text("SELECT min(seq) FROM events WHERE stream_id = :sid")
_PAGE = text(
    """
    SELECT seq, job_id, event, payload::text AS payload,
           payload->'parent'->>'parentJobId' AS parent_id
    FROM events WHERE stream_id = :sid AND seq > :after AND seq <= :upto
    ORDER BY seq LIMIT :limit
    """
)
# What job.sync covers, most important first: the job named by jobId, then parents (a
# parent's children must never crowd it out), then unfinished jobs, then jobs that ended
# since :since (the client may have missed their last event); newest first in each group.
_SYNC = text(
    """
    SELECT id, (id = :job_id) IS TRUE AS named, total_children IS NOT NULL AS parent
    FROM jobs
    WHERE app_id = :app_id AND mode = :mode AND user_id = :user_id AND expires_at > :now
      AND (CAST(:job_id AS varchar) IS NULL OR id = :job_id OR parent_job_id = :job_id)
      AND (id = :job_id OR status IN ('pending', 'running') OR completed_at >= :since)
    ORDER BY (id = :job_id) IS TRUE DESC, total_children IS NOT NULL DESC,
             status IN ('pending', 'running') DESC, id DESC
    LIMIT :limit
    """
)
_JOBS = text(
    "SELECT * FROM jobs WHERE app_id = :app_id AND mode = :mode AND id = ANY(:ids) "
    "AND expires_at > :now"
)


# Stream ids are identities from 1: this one names "no stream yet" (the user never wrote).
NO_STREAM = 0


@dataclass(frozen=True)
class Stream:
    stream_id: int
    last_seq: int


async def stream_for(conn: AsyncConnection, owner: Owner, user_id: str) -> Stream:
    """The user's stream and its committed position; ``NO_STREAM`` at 0 when the user has
    never written. Reading writes nothing: a user's first write creates the stream."""
    params = {"app_id": owner.app_id, "mode": owner.mode, "user_id": user_id}
    row = (await conn.execute(_STREAM, params)).first()
    if row is None:
        return Stream(NO_STREAM, 0)
    return Stream(row[0], row[1])


async def oldest_seq(conn: AsyncConnection, stream_id: int) -> int | None:
    return (await conn.execute(_OLDEST, {"sid": stream_id})).scalar()


async def page(
    conn: AsyncConnection, stream_id: int, after: int, upto: int, limit: int
) -> list[Any]:
    """Up to ``limit`` events of the stream in ``(after, upto]``, in order."""
    params = {"sid": stream_id, "after": after, "upto": upto, "limit": limit}
    return list((await conn.execute(_PAGE, params)).mappings())


async def sync_ids(
    conn: AsyncConnection,
    owner: Owner,
    user_id: str,
    job_id: str | None,
    now: datetime,
    since: datetime | None,
    limit: int,
) -> list[str]:
    """The jobs a ``job.sync`` covers, in the order they are sent: the job named by
    ``job_id`` first, then parents, then the rest, each group in creation order.

    The limit keeps the named job and the parents before any other job.
    """
    params = {
        "app_id": owner.app_id,
        "mode": owner.mode,
        "user_id": user_id,
        "job_id": job_id,
        "now": now,
        "since": since,
        "limit": limit,
    }
    rows = (await conn.execute(_SYNC, params)).all()
    ordered = sorted(rows, key=lambda r: (not r.named, not r.parent, r.id))
    return [r.id for r in ordered]


async def jobs_by_id(
    conn: AsyncConnection, owner: Owner, ids: list[str], now: datetime
) -> list[Any]:
    """The owner's unexpired jobs among ``ids``, in the order of ``ids``."""
    params = {"app_id": owner.app_id, "mode": owner.mode, "ids": ids, "now": now}
    found = {r["id"]: r for r in (await conn.execute(_JOBS, params)).mappings()}
    return [found[i] for i in ids if i in found]


_PRUNE = text(
    """
    DELETE FROM events WHERE ctid IN (
        SELECT ctid FROM events
        WHERE created_at < now() - make_interval(secs => :secs)
        LIMIT :batch FOR UPDATE SKIP LOCKED
    )
    """
)


async def prune_batch(conn: AsyncConnection, retention_hours: float, batch: int) -> int:
    """Delete up to ``batch`` events older than the retention window; how many were."""
    result = await conn.execute(_PRUNE, {"secs": retention_hours * 3600, "batch": batch})
    return int(result.rowcount)
