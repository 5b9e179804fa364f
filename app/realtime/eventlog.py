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
# A stream row with last_seq 0 lets a subscriber wait on a user who has never written.
_CREATE_STREAM = text(
    "INSERT INTO event_streams (app_id, mode, user_id, last_seq) "
    "VALUES (:app_id, :mode, :user_id, 0) ON CONFLICT (app_id, mode, user_id) DO NOTHING"
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


@dataclass(frozen=True)
class Stream:
    stream_id: int
    last_seq: int


async def stream_for(conn: AsyncConnection, owner: Owner, user_id: str) -> Stream:
    """The user's stream (created empty if the user never wrote), committed position."""
    params = {"app_id": owner.app_id, "mode": owner.mode, "user_id": user_id}
    row = (await conn.execute(_STREAM, params)).first()
    if row is None:
        await conn.execute(_CREATE_STREAM, params)
        await conn.commit()
        row = (await conn.execute(_STREAM, params)).first()
    assert row is not None
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
