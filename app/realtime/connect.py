"""What a stream's connect reads from the event log: where the stream starts (resuming
after ``Last-Event-ID`` when the log still holds everything since), and which jobs a
fresh connect brings up to date with ``job.sync``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import eventlog
from app.db.repository import Owner
from app.domain.clock import now_ms


@dataclass(frozen=True, slots=True)
class Start:
    stream_id: int
    head: int  # the stream's last seq at the connect
    start: int  # events after this seq are sent
    resume: bool  # replaying after the client's Last-Event-ID (else: a fresh connect)


async def starting_point(
    conn: AsyncConnection, owner: Owner, user_id: str, last_id: int | None, max_replay: int
) -> Start:
    """Resume after ``last_id`` if it is at most ``max_replay`` events behind and the log
    still holds every event after it; else start at the head. Seqs are dense per stream,
    so the count to replay is known without a query; a client too far behind is brought up
    to date by ``job.sync``, not a huge replay."""
    stream = await eventlog.stream_for(conn, owner, user_id)
    resume = last_id is not None and last_id <= stream.last_seq
    if resume and last_id is not None:
        resume = stream.last_seq - last_id <= max_replay
    if resume and last_id is not None and last_id < stream.last_seq:
        oldest = await eventlog.oldest_seq(conn, stream.stream_id)
        resume = oldest is not None and oldest <= last_id + 1
    start = last_id if resume and last_id is not None else stream.last_seq
    return Start(stream.stream_id, stream.last_seq, start, resume)


async def jobs_to_sync(
    conn: AsyncConnection,
    owner: Owner,
    user_id: str,
    job_id: str | None,
    window_hours: float,
    limit: int,
) -> list[str]:
    """The jobs a fresh connect sends as ``job.sync``: those live now and those that ended
    within ``window_hours``, at most ``limit``."""
    now = now_ms()
    since = now - timedelta(hours=window_hours)
    return await eventlog.sync_ids(conn, owner, user_id, job_id, now, since, limit)
