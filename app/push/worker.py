"""The delivery worker: sends the outbox's due pushes to APNs, after the writes committed.

Every replica runs one. A worker claims due rows (``FOR UPDATE SKIP LOCKED``, marked
``sending`` with a lease), sends them concurrently over one HTTP/2 connection, and records
each outcome: sent; retried with exponential backoff (429, 5xx, network errors); or failed,
the token deleted when APNs says it is no longer valid. Claimed rows belong to one replica
until their lease ends, so replicas never send the same delivery twice; a replica that
stops finishes the batch in hand first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.push_repository import PushRepository
from app.db.repository import Row
from app.observability import Metrics
from app.push.apns import ApnsClient, ApnsConfig, ApnsResponse, Push
from app.settings import Settings

log = logging.getLogger(__name__)

NOT_CONFIGURED = "APNs is not configured"
# APNs reasons meaning the token will never work again (Apple: delete it).
_DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "Unregistered", "ExpiredToken"})
# Statuses worth another attempt: APNs overloaded or down, or our provider token expired.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DEPTH_EVERY_SECONDS = 1.0
_STOP_GRACE_SECONDS = 15.0
_EXPIRATION_SECONDS = {"update": 3600, "end": 8 * 3600, "alert": 24 * 3600, "background": 3600}


def to_push(row: Row, dismiss_seconds: int, now: float) -> Push:
    """The APNs request for an outbox row (an ``end`` gets its ``dismissal-date`` here)."""
    payload: dict[str, Any] = row["payload"]
    kind, event = row["kind"], row["event"]
    if kind == "liveactivity" and event == "end":
        aps = payload["aps"]
        payload = {**payload, "aps": {**aps, "dismissal-date": aps["timestamp"] + dismiss_seconds}}
    priority = 5 if kind == "background" else 10
    lifetime = _EXPIRATION_SECONDS[event if kind == "liveactivity" else kind]
    return Push(
        token=row["token"],
        push_type=kind,
        priority=priority,
        expiration=int(now) + lifetime,
        apns_id=str(row["apns_id"]),
        payload=payload,
    )


@dataclass
class PushWorker:
    engine: AsyncEngine
    settings: Settings
    metrics: Metrics
    client: ApnsClient | None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _depth_at: float = 0.0

    async def run(self) -> None:
        """Work until :meth:`stop`; database or APNs outages are logged, never fatal."""
        interval = self.settings.push_poll_interval_seconds
        while not self._stopping.is_set():
            try:
                busy = await self.run_once()
            except Exception as exc:  # a database outage must not end the worker
                log.warning("push delivery failed: %s: %s", exc.__class__.__name__, exc)
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), interval)

    async def stop(self) -> None:
        self._stopping.set()

    async def run_once(self) -> bool:
        """Claim and send one batch; True when the batch was full (more may be due)."""
        await self._observe_depth()
        limit = self.settings.push_batch_size
        if self.client is None:
            async with self._autocommit() as repo:
                skipped: int = await repo.skip_due(limit, NOT_CONFIGURED)
            self.metrics.push_skipped.inc(skipped)
            return skipped == limit
        lease = timedelta(seconds=self.settings.push_lease_seconds)
        async with self._autocommit() as repo:
            claimed = await repo.claim(limit, lease)
        if claimed:
            outcomes = await asyncio.gather(*(self._send(row) for row in claimed))
            async with self._autocommit() as repo:
                for row, outcome in zip(claimed, outcomes, strict=True):
                    await self._record(repo, row, outcome)
        return len(claimed) == limit

    async def _send(self, row: Row) -> ApnsResponse | Exception:
        assert self.client is not None
        push = to_push(row, self.settings.live_activity_dismiss_seconds, time.time())
        try:
            return await self.client.send(push)
        except (httpx.HTTPError, OSError) as exc:
            return exc

    async def _record(self, repo: PushRepository, row: Row, outcome: Any) -> None:
        kind = row["kind"]
        if isinstance(outcome, ApnsResponse) and outcome.status == 200:
            await repo.mark_sent(row["id"], 200)
            self.metrics.push_sent.labels(kind).inc()
            return
        if isinstance(outcome, Exception):
            status, reason = None, f"{outcome.__class__.__name__}"
        else:
            status, reason = outcome.status, outcome.reason or f"HTTP {outcome.status}"
        if status is not None and (status == 410 or reason in _DEAD_TOKEN_REASONS):
            await repo.mark_failed(row["id"], status, reason)
            await repo.forget_token(row, f"token removed: {reason}")
            self.metrics.push_failed.labels(kind, reason).inc()
            self.metrics.push_tokens_deleted.inc()
            log.info("APNs refused a %s token (%s %s): token deleted", kind, status, reason)
            return
        retryable = status is None or status in _RETRY_STATUSES or reason == "ExpiredProviderToken"
        if retryable and row["attempts"] < self.settings.push_max_attempts:
            await repo.retry_later(row["id"], self._backoff(row["attempts"]), status, reason)
            self.metrics.push_retried.labels(kind).inc()
            return
        await repo.mark_failed(row["id"], status, reason)
        self.metrics.push_failed.labels(kind, reason).inc()
        log.warning("push %s failed for good: %s %s", row["id"], status, reason)

    def _backoff(self, attempts: int) -> timedelta:
        base = self.settings.push_retry_base_seconds * 2 ** max(attempts - 1, 0)
        delay = min(base, self.settings.push_retry_max_seconds)
        return timedelta(seconds=delay * random.uniform(0.8, 1.2))

    async def _observe_depth(self) -> None:
        now = time.monotonic()
        if now - self._depth_at < _DEPTH_EVERY_SECONDS:
            return
        self._depth_at = now
        async with self._autocommit() as repo:
            self.metrics.push_outbox_depth.set(await repo.depth())

    @contextlib.asynccontextmanager
    async def _autocommit(self) -> Any:
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield PushRepository(conn)


class PushDelivery:
    """This replica's push worker as a background task (``start()``, ``await stop()``)."""

    def __init__(self, engine: AsyncEngine, settings: Settings, metrics: Metrics) -> None:
        config = ApnsConfig.from_settings(settings)
        self.worker = PushWorker(
            engine, settings, metrics, ApnsClient(config) if config is not None else None
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker; without APNs settings it only marks due pushes skipped."""
        client = self.worker.client
        if client is None:
            log.info(
                "%s (SEENN_APNS_* unset): devices are stored, pushes are skipped", NOT_CONFIGURED
            )
        else:
            log.info("push delivery to %s for %s", client.config.url, client.config.bundle_id)
        self.task = asyncio.create_task(self.worker.run(), name="seenn-push-worker")

    async def stop(self) -> None:
        """Let the batch in hand finish (its outcomes recorded), then stop."""
        await self.worker.stop()
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), _STOP_GRACE_SECONDS)
            except TimeoutError:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
        if self.worker.client is not None:
            await self.worker.client.aclose()
