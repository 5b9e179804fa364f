"""The SQL of the realtime hub, on a raw asyncpg connection: the log read of every followed
stream at once, the lookup of streams created since, the ping of the LISTEN connection, and
NOTIFY."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CHANNEL = "seenn_events"

_READ_MANY = """
SELECT e.stream_id, e.seq, e.job_id, e.event, e.payload::text AS payload,
       e.payload->'parent'->>'parentJobId' AS parent_id, e.created_at
FROM unnest($1::bigint[], $2::bigint[]) AS p(stream_id, pos)
JOIN events e ON e.stream_id = p.stream_id AND e.seq > p.pos
ORDER BY e.stream_id, e.seq
"""
# The streams created since a subscriber found none (its user had never written).
_FIND_STREAMS = """
SELECT s.stream_id, s.app_id, s.mode, s.user_id
FROM unnest($1::text[], $2::text[], $3::text[]) AS k(app_id, mode, user_id)
JOIN event_streams s USING (app_id, mode, user_id)
"""
_NOTIFY = "SELECT pg_notify($1, $2)"


async def read_many(
    conn: Any, streams: Sequence[int], positions: Sequence[int], seconds: float
) -> list[Any]:
    """Every event after each stream's position, by stream then seq."""
    rows: list[Any] = await conn.fetch(_READ_MANY, streams, positions, timeout=seconds)
    return rows


async def find_streams(conn: Any, columns: Sequence[Sequence[str]], seconds: float) -> list[Any]:
    """The streams of ``(app_ids, modes, user_ids)`` that exist now."""
    rows: list[Any] = await conn.fetch(_FIND_STREAMS, *columns, timeout=seconds)
    return rows


async def ping(conn: Any, seconds: float) -> None:
    await conn.execute("SELECT 1", timeout=seconds)


async def notify(conn: Any, payload: str, seconds: float | None = None) -> None:
    """NOTIFY the hubs of every replica (outside any write transaction)."""
    await conn.execute(_NOTIFY, CHANNEL, payload, timeout=seconds)
