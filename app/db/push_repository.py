"""SQL for push: the apps' tokens and the outbox of deliveries, on the caller's connection.

The outbox is shared by every replica. A worker claims due rows with ``FOR UPDATE SKIP
LOCKED`` and a lease (status ``sending``), so two replicas never claim the same row; a
claim whose replica died is taken over when its lease runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.repository import Owner, Row

# At most one Live Activity update (or silent push) per job and token per interval: Apple
# budgets Live Activity updates, and a progress bar needs no more.
MIN_INTERVAL = timedelta(seconds=1)
ACTIVE = ("pending", "sending")


@dataclass(frozen=True)
class Delivery:
    """One push to queue: ``kind`` (liveactivity, alert, background), a Live Activity's
    ``event``, the target (a row with ``device_id`` and ``token``) and the APNs payload."""

    kind: str
    event: str | None
    target: Row
    payload: dict[str, Any]

    @property
    def coalesces(self) -> bool:
        """A newer one replaces one still waiting (it carries the whole current state)."""
        return self.kind == "background" or self.event == "update"


_TARGETS = text(
    """
    SELECT 'liveactivity' AS kind, device_id, token, NULL AS platform
      FROM live_activity_tokens
     WHERE app_id = :app_id AND mode = :mode AND user_id = :user_id AND job_id = :job_id
    UNION ALL
    SELECT 'device', device_id, token, platform
      FROM device_tokens
     WHERE app_id = :app_id AND mode = :mode AND user_id = :user_id
    """
)

# One statement per delivery: an ``end`` supersedes the updates still waiting; an update
# replaces the payload of one still waiting (a worker's claim, committed first, makes that
# row no longer pending, and then a new row is inserted); otherwise a new row is due no
# sooner than MIN_INTERVAL after the last one of the same job, token and kind. Due times
# are the database's clock (``now()``), as the workers' claims compare them with it.
_ENQUEUE = text(
    """
    WITH superseded AS (
        UPDATE push_deliveries SET status = 'superseded', updated_at = :now
         WHERE :ending AND job_id = :job_id AND token = :token AND kind = :kind
           AND status = 'pending'
        RETURNING id
    ), merged AS (
        UPDATE push_deliveries
           SET payload = :payload, updated_at = :now, coalesced = coalesced + 1
         WHERE :coalesces AND job_id = :job_id AND token = :token AND kind = :kind
           AND event IS NOT DISTINCT FROM :event AND status = 'pending'
        RETURNING id
    ), inserted AS (
        INSERT INTO push_deliveries (app_id, mode, user_id, device_id, job_id, kind, event,
                                     token, payload, status, not_before, created_at,
                                     updated_at)
        SELECT :app_id, :mode, :user_id, :device_id, :job_id, :kind, :event, :token,
               :payload, 'pending',
               CASE WHEN :spaced THEN greatest(now(), (
                   SELECT max(not_before) FROM push_deliveries
                    WHERE job_id = :job_id AND token = :token AND kind = :kind
               ) + :interval) ELSE now() END,
               :now, :now
         WHERE NOT EXISTS (SELECT 1 FROM merged)
        RETURNING id
    )
    SELECT (SELECT count(*) FROM merged), (SELECT count(*) FROM inserted),
           (SELECT count(*) FROM superseded)
    """
).bindparams(bindparam("payload", type_=JSONB))

_UPSERT_LIVE_ACTIVITY = text(
    """
    WITH flagged AS (
        UPDATE jobs SET live_activity = true
         WHERE id = :job_id AND app_id = :app_id AND mode = :mode AND NOT live_activity
    )
    INSERT INTO live_activity_tokens AS t (app_id, mode, user_id, device_id, job_id, token,
                                           activity_id, created_at, updated_at)
    VALUES (:app_id, :mode, :user_id, :device_id, :job_id, :token, :activity_id, :now, :now)
    ON CONFLICT (app_id, mode, user_id, device_id, job_id) DO UPDATE
       SET token = excluded.token, activity_id = excluded.activity_id,
           updated_at = excluded.updated_at
    """
)
_DELETE_LIVE_ACTIVITY = text(
    """
    DELETE FROM live_activity_tokens
     WHERE app_id = :app_id AND mode = :mode AND user_id = :user_id
       AND device_id = :device_id AND job_id = :job_id
    """
)
_UPSERT_DEVICE = text(
    """
    INSERT INTO device_tokens AS t (app_id, mode, user_id, device_id, platform, token,
                                    created_at, updated_at)
    VALUES (:app_id, :mode, :user_id, :device_id, :platform, :token, :now, :now)
    ON CONFLICT (app_id, mode, user_id, device_id) DO UPDATE
       SET platform = excluded.platform, token = excluded.token,
           updated_at = excluded.updated_at
    """
)
_DELETE_DEVICE = text(
    """
    DELETE FROM device_tokens
     WHERE app_id = :app_id AND mode = :mode AND user_id = :user_id AND device_id = :device_id
    """
)
# A token APNs called invalid goes, unless the app has registered a new one since.
_FORGET_LIVE_ACTIVITY = text(
    """
    DELETE FROM live_activity_tokens
     WHERE app_id = :app_id AND mode = :mode AND user_id = :user_id
       AND device_id = :device_id AND job_id = :job_id AND token = :token
    """
)
_FORGET_DEVICE = text(
    """
    DELETE FROM device_tokens
     WHERE app_id = :app_id AND mode = :mode AND user_id = :user_id
       AND device_id = :device_id AND token = :token
    """
)
# Also drops what is still queued for the dead token.
_DROP_QUEUED = text(
    """
    UPDATE push_deliveries SET status = 'failed', updated_at = now(),
                               last_reason = :reason, lease_until = NULL
     WHERE job_id = :job_id AND token = :token AND status = 'pending'
    """
)

_CLAIM = text(
    """
    UPDATE push_deliveries d
       SET status = 'sending', attempts = d.attempts + 1, updated_at = now(),
           lease_until = now() + :lease
     WHERE d.id IN (
        SELECT id FROM push_deliveries
         WHERE status IN ('pending', 'sending') AND not_before <= now()
           AND (status = 'pending' OR lease_until < now())
         ORDER BY not_before
         LIMIT :limit
         FOR UPDATE SKIP LOCKED)
    RETURNING d.*
    """
)
_SENT = text(
    """
    UPDATE push_deliveries
       SET status = 'sent', sent_at = now(), updated_at = now(), lease_until = NULL,
           last_status = :status, last_reason = NULL
     WHERE id = :id AND status = 'sending'
    """
)
_RETRY = text(
    """
    UPDATE push_deliveries
       SET status = 'pending', not_before = now() + :delay, updated_at = now(),
           lease_until = NULL, last_status = :status, last_reason = :reason
     WHERE id = :id AND status = 'sending'
    """
)
_FAILED = text(
    """
    UPDATE push_deliveries
       SET status = 'failed', updated_at = now(), lease_until = NULL,
           last_status = :status, last_reason = :reason
     WHERE id = :id AND status = 'sending'
    """
)
_SKIP_DUE = text(
    """
    UPDATE push_deliveries SET status = 'skipped', updated_at = now(), last_reason = :reason
     WHERE id IN (
        SELECT id FROM push_deliveries
         WHERE status = 'pending' AND not_before <= now()
         LIMIT :limit
         FOR UPDATE SKIP LOCKED)
    """
)
_DEPTH = text("SELECT count(*) FROM push_deliveries WHERE status IN ('pending', 'sending')")
_NEXT_DUE = text(
    "SELECT min(not_before) FROM push_deliveries WHERE status IN ('pending', 'sending')"
)
_LIST_FOR_JOB = text(
    """
    SELECT * FROM push_deliveries
     WHERE app_id = :app_id AND mode = :mode AND job_id = :job_id
     ORDER BY id DESC LIMIT :limit
    """
)
_DELETE_FINISHED = text(
    """
    DELETE FROM push_deliveries WHERE id = ANY(ARRAY(
        SELECT id FROM push_deliveries
         WHERE status NOT IN ('pending', 'sending') AND updated_at < :before
         LIMIT :limit
         FOR UPDATE SKIP LOCKED))
    """
)


def _owner(owner: Owner, **params: Any) -> dict[str, Any]:
    return {"app_id": owner.app_id, "mode": owner.mode, **params}


class PushRepository:
    """Tokens and deliveries. Callers own the transaction (the worker runs in autocommit)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    # --- tokens -----------------------------------------------------------------------

    async def upsert_live_activity_token(self, owner: Owner, token: Row, now: datetime) -> None:
        """Store ``token`` (user_id, device_id, job_id, token, activity_id); replaces. The
        job is flagged (``jobs.live_activity``) in the same statement, so its writes push
        Live Activity updates without being asked."""
        await self.conn.execute(_UPSERT_LIVE_ACTIVITY, _owner(owner, **token, now=now))

    async def delete_live_activity_token(self, owner: Owner, key: Row) -> bool:
        """Delete by ``key`` (user_id, device_id, job_id); whether there was one."""
        return (await self.conn.execute(_DELETE_LIVE_ACTIVITY, _owner(owner, **key))).rowcount > 0

    async def upsert_device_token(self, owner: Owner, token: Row, now: datetime) -> None:
        """Store ``token`` (user_id, device_id, platform, token); replaces."""
        await self.conn.execute(_UPSERT_DEVICE, _owner(owner, **token, now=now))

    async def delete_device_token(self, owner: Owner, key: Row) -> bool:
        """Delete by ``key`` (user_id, device_id); whether there was one."""
        return (await self.conn.execute(_DELETE_DEVICE, _owner(owner, **key))).rowcount > 0

    async def targets(self, owner: Owner, user_id: str, job_id: str) -> list[Row]:
        """The job's Live Activity tokens and its user's device tokens."""
        params = _owner(owner, user_id=user_id, job_id=job_id)
        return [dict(r) for r in (await self.conn.execute(_TARGETS, params)).mappings()]

    async def forget_token(self, row: Row, reason: str) -> None:
        """APNs says the delivery's token is dead: delete it and what is queued for it."""
        params = {
            "app_id": row["app_id"],
            "mode": row["mode"],
            "user_id": row["user_id"],
            "device_id": row["device_id"],
            "token": row["token"],
        }
        if row["kind"] == "liveactivity":
            await self.conn.execute(_FORGET_LIVE_ACTIVITY, {**params, "job_id": row["job_id"]})
        else:
            await self.conn.execute(_FORGET_DEVICE, params)
        drop = {"job_id": row["job_id"], "token": row["token"], "reason": reason}
        await self.conn.execute(_DROP_QUEUED, drop)

    # --- the outbox -------------------------------------------------------------------

    async def enqueue(self, owner: Owner, job: Row, delivery: Delivery, now: datetime) -> None:
        params = _owner(
            owner,
            user_id=job["user_id"],
            device_id=delivery.target["device_id"],
            job_id=job["id"],
            kind=delivery.kind,
            event=delivery.event,
            token=delivery.target["token"],
            payload=delivery.payload,
            now=now,
            ending=delivery.event == "end",
            coalesces=delivery.coalesces,
            spaced=delivery.kind != "alert",
            interval=MIN_INTERVAL,
        )
        await self.conn.execute(_ENQUEUE, params)

    async def claim(self, limit: int, lease: timedelta) -> list[Row]:
        """Take up to ``limit`` due deliveries for this worker (status ``sending``)."""
        result = await self.conn.execute(_CLAIM, {"limit": limit, "lease": lease})
        return [dict(r) for r in result.mappings()]

    async def mark_sent(self, delivery_id: int, status: int) -> None:
        await self.conn.execute(_SENT, {"id": delivery_id, "status": status})

    async def retry_later(
        self, delivery_id: int, delay: timedelta, status: int | None, reason: str
    ) -> None:
        params = {"id": delivery_id, "delay": delay, "status": status, "reason": reason[:100]}
        await self.conn.execute(_RETRY, params)

    async def mark_failed(self, delivery_id: int, status: int | None, reason: str) -> None:
        params = {"id": delivery_id, "status": status, "reason": reason[:100]}
        await self.conn.execute(_FAILED, params)

    async def skip_due(self, limit: int, reason: str) -> int:
        result = await self.conn.execute(_SKIP_DUE, {"limit": limit, "reason": reason})
        return int(result.rowcount)

    async def depth(self) -> int:
        """Deliveries queued or in flight, across every replica."""
        return int((await self.conn.execute(_DEPTH)).scalar_one())

    async def next_due(self) -> datetime | None:
        value: datetime | None = (await self.conn.execute(_NEXT_DUE)).scalar_one()
        return value

    async def list_for_job(self, owner: Owner, job_id: str, limit: int) -> list[Row]:
        params = _owner(owner, job_id=job_id, limit=limit)
        return [dict(r) for r in (await self.conn.execute(_LIST_FOR_JOB, params)).mappings()]

    async def delete_finished(self, before: datetime, limit: int) -> int:
        result = await self.conn.execute(_DELETE_FINISHED, {"before": before, "limit": limit})
        return int(result.rowcount)
