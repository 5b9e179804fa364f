"""SQL for the dashboard: browser sessions, app-wide job lists, event history, ETA accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Text, bindparam, delete, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.repository import Owner, Row
from app.db.tables import dashboard_sessions

_SESSION = text(
    """
    SELECT s.csrf_token, s.expires_at, k.id AS key_id, k.app_id, k.mode, k.kind, k.key_hint
    FROM dashboard_sessions s JOIN api_keys k ON k.id = s.key_id
    WHERE s.token_hash = :token_hash AND s.expires_at > :now AND k.revoked_at IS NULL
      AND NOT (k.kind = 'public' AND EXISTS (  -- a token-only app's public keys read nothing
        SELECT 1 FROM app_settings a WHERE a.app_id = k.app_id AND a.public_keys_token_only))
    """
)

# Top-level jobs only (children are shown on their parent's page), newest first; the
# partial index ix_jobs_app_recent serves the unfiltered list.
_LIST_JOBS = """
    SELECT * FROM jobs
    WHERE app_id = :app_id AND mode = :mode AND parent_job_id IS NULL AND expires_at > :now
      AND (CAST(:user_id AS varchar) IS NULL OR user_id = :user_id)
      AND (CAST(:job_type AS varchar) IS NULL OR job_type = :job_type)
      AND (CAST(:status AS varchar) IS NULL OR status = :status)
      AND (CAST(:before_id AS varchar) IS NULL OR id < :before_id)
      AND (CAST(:after_id AS varchar) IS NULL OR id > :after_id)
    ORDER BY id DESC LIMIT :limit
"""
_JOBS_BY_IDS = text(
    "SELECT * FROM jobs WHERE app_id = :app_id AND mode = :mode AND expires_at > :now"
    " AND id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(Text)))
_JOB_EVENTS = text(
    """
    SELECT e.seq, e.event, e.created_at, e.payload
    FROM events e JOIN event_streams s ON s.stream_id = e.stream_id
    WHERE e.job_id = :job_id AND s.app_id = :app_id AND s.mode = :mode
    ORDER BY e.created_at DESC, e.seq DESC LIMIT :limit
    """
)
_STREAMS = text(
    "SELECT stream_id, last_seq FROM event_streams"
    " WHERE app_id = :app_id AND mode = :mode AND last_seq > 0"
)
_READ_EVENTS = text(
    """
    SELECT e.stream_id, e.seq, e.job_id, e.event, e.payload::text AS payload
    FROM unnest(:streams, :after, :upto) AS p(stream_id, after, upto)
    JOIN events e ON e.stream_id = p.stream_id AND e.seq > p.after AND e.seq <= p.upto
    ORDER BY e.created_at, e.stream_id, e.seq
    """
).bindparams(
    bindparam("streams", type_=ARRAY(BigInteger)),
    bindparam("after", type_=ARRAY(BigInteger)),
    bindparam("upto", type_=ARRAY(BigInteger)),
)
# For each job whose completion is still in the event log: the first and the last
# estimatedCompletionAt its events carried, against its real completedAt.
_ETA_ACCURACY = text(
    """
    WITH done AS (
        SELECT e.job_id,
               coalesce(nullif(e.payload->>'workflowId', ''), e.payload->>'jobType')
               || CASE WHEN e.payload ? 'children' THEN '#parent' ELSE '' END AS eta_key,
               (e.payload->>'completedAt')::timestamptz AS completed_at
        FROM events e JOIN event_streams s ON s.stream_id = e.stream_id
        WHERE s.app_id = :app_id AND s.mode = :mode AND e.event = 'job.completed'
          AND e.payload ? 'completedAt'
    ), estimates AS (
        SELECT d.eta_key, d.completed_at,
               (array_agg((e.payload->>'estimatedCompletionAt')::timestamptz
                          ORDER BY e.created_at, e.seq))[1] AS first_eta,
               (array_agg((e.payload->>'estimatedCompletionAt')::timestamptz
                          ORDER BY e.created_at DESC, e.seq DESC))[1] AS last_eta
        FROM done d JOIN events e ON e.job_id = d.job_id
        WHERE e.payload ? 'estimatedCompletionAt'
        GROUP BY d.job_id, d.eta_key, d.completed_at
    ), errors AS (
        SELECT eta_key,
               extract(epoch FROM first_eta - completed_at) * 1000 AS first_ms,
               extract(epoch FROM last_eta - completed_at) * 1000 AS last_ms
        FROM estimates
    )
    SELECT eta_key, count(*) AS jobs,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(first_ms)) AS first_abs_p50,
           avg(first_ms) AS first_bias,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(last_ms)) AS last_abs_p50
    FROM errors GROUP BY eta_key
    """
)


@dataclass(frozen=True, slots=True)
class JobFilter:
    user_id: str | None = None
    job_type: str | None = None
    status: str | None = None


class DashboardRepository:
    """Queries over one connection; callers own the transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    # --- sessions ---------------------------------------------------------------------

    async def create_session(self, values: Row) -> None:
        await self.conn.execute(insert(dashboard_sessions).values(**values))

    async def find_session(self, token_hash: bytes, now: datetime) -> Row | None:
        params = {"token_hash": token_hash, "now": now}
        row = (await self.conn.execute(_SESSION, params)).mappings().first()
        return dict(row) if row else None

    async def delete_session(self, token_hash: bytes) -> bool:
        stmt = delete(dashboard_sessions).where(dashboard_sessions.c.token_hash == token_hash)
        return bool((await self.conn.execute(stmt)).rowcount)

    async def delete_expired_sessions(self, now: datetime) -> int:
        stmt = delete(dashboard_sessions).where(dashboard_sessions.c.expires_at <= now)
        return int((await self.conn.execute(stmt)).rowcount)

    # --- jobs and events --------------------------------------------------------------

    async def list_jobs(
        self,
        owner: Owner,
        where: JobFilter,
        before_id: str | None,
        limit: int,
        now: datetime,
        after_id: str | None = None,
    ) -> list[Row]:
        """Top-level jobs, newest first, older than ``before_id`` / newer than ``after_id``."""
        params = {
            "app_id": owner.app_id,
            "mode": owner.mode,
            "now": now,
            "user_id": where.user_id,
            "job_type": where.job_type,
            "status": where.status,
            "before_id": before_id,
            "after_id": after_id,
            "limit": limit,
        }
        return [dict(r) for r in (await self.conn.execute(text(_LIST_JOBS), params)).mappings()]

    async def jobs_by_ids(self, owner: Owner, ids: Sequence[str], now: datetime) -> list[Row]:
        params = {"app_id": owner.app_id, "mode": owner.mode, "now": now, "ids": list(ids)}
        return [dict(r) for r in (await self.conn.execute(_JOBS_BY_IDS, params)).mappings()]

    async def job_events(self, owner: Owner, job_id: str, limit: int) -> list[Row]:
        """The job's retained events, newest first."""
        params = {"app_id": owner.app_id, "mode": owner.mode, "job_id": job_id, "limit": limit}
        return [dict(r) for r in (await self.conn.execute(_JOB_EVENTS, params)).mappings()]

    async def stream_positions(self, owner: Owner) -> dict[int, int]:
        """Every event stream of the app and mode, with its committed last seq."""
        params = {"app_id": owner.app_id, "mode": owner.mode}
        return {r[0]: r[1] for r in await self.conn.execute(_STREAMS, params)}

    async def read_events(self, ranges: Sequence[tuple[int, int, int]]) -> list[Any]:
        """Events of each ``(stream, after, upto)`` range, oldest first."""
        params = {
            "streams": [r[0] for r in ranges],
            "after": [r[1] for r in ranges],
            "upto": [r[2] for r in ranges],
        }
        return list((await self.conn.execute(_READ_EVENTS, params)).mappings())

    # --- ETA --------------------------------------------------------------------------

    async def eta_accuracy(self, owner: Owner) -> dict[str, Row]:
        params = {"app_id": owner.app_id, "mode": owner.mode}
        rows = (await self.conn.execute(_ETA_ACCURACY, params)).mappings()
        return {r["eta_key"]: dict(r) for r in rows}

    # --- keys -------------------------------------------------------------------------
