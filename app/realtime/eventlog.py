"""Reads of the event log and stream state for one SSE connection (never writes events)."""

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
_BACKLOG = text(
    """
    SELECT seq, job_id, event, payload::text AS payload,
           payload->'parent'->>'parentJobId' AS parent_id
    FROM events WHERE stream_id = :sid AND seq > :after ORDER BY seq
    """
)
_UNFINISHED = text(
    """
    SELECT * FROM jobs
    WHERE app_id = :app_id AND mode = :mode AND user_id = :user_id
      AND status IN ('pending', 'running') AND expires_at > :now
      AND (CAST(:job_id AS varchar) IS NULL OR id = :job_id OR parent_job_id = :job_id)
    ORDER BY id DESC LIMIT :limit
    """
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


async def backlog(conn: AsyncConnection, stream_id: int, after: int) -> list[Any]:
    """Every retained event of the stream after ``after``, in order."""
    return list((await conn.execute(_BACKLOG, {"sid": stream_id, "after": after})).mappings())


async def unfinished_jobs(
    conn: AsyncConnection,
    owner: Owner,
    user_id: str,
    job_id: str | None,
    now: datetime,
    limit: int,
) -> list[Any]:
    """The user's newest ``limit`` unfinished jobs, in creation order."""
    params = {
        "app_id": owner.app_id,
        "mode": owner.mode,
        "user_id": user_id,
        "job_id": job_id,
        "now": now,
        "limit": limit,
    }
    newest_first = list((await conn.execute(_UNFINISHED, params)).mappings())
    return newest_first[::-1]
