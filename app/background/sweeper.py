"""The sweeper: deletes expired jobs, old idempotency records and finished pushes.

Safe to run in every replica at once: each batch is its own short transaction that picks
rows with ``SKIP LOCKED``, so sweepers share the work instead of waiting for each other.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from app.background.eta_compaction import compact_all_eta
from app.background.loop import PeriodicTask
from app.db.push_repository import PushRepository
from app.db.sweep_repository import SweepRepository
from app.domain.clock import now_ms
from app.settings import Settings

log = logging.getLogger(__name__)

# Reads hide a job the moment it expires; deleting it a minute later means a write that
# saw the job alive just before it expired never finds its row gone mid-transaction.
SWEEP_GRACE = timedelta(seconds=60)


@dataclass
class SweepResult:
    """Rows deleted by one sweep."""

    children: int = 0
    jobs: int = 0
    idempotency_keys: int = 0
    pushes: int = 0

    @property
    def total(self) -> int:
        return self.children + self.jobs + self.idempotency_keys + self.pushes


async def _drain(engine: AsyncEngine, batch: Callable[[SweepRepository], Awaitable[int]]) -> int:
    """Run one kind of batch until a batch deletes nothing; each batch commits on its own."""
    deleted = 0
    while True:
        async with engine.begin() as conn:
            n = await batch(SweepRepository(conn))
        deleted += n
        if n == 0:
            return deleted
        await asyncio.sleep(0)  # let requests in between batches


async def sweep_once(
    engine: AsyncEngine,
    *,
    batch_size: int = 500,
    idempotency_retention: timedelta = timedelta(hours=24),
    push_retention: timedelta = timedelta(hours=24),
    now: datetime | None = None,
    grace: timedelta = SWEEP_GRACE,
) -> SweepResult:
    """Delete everything that expired (jobs more than ``grace`` ago), in bounded batches."""
    now = now or now_ms()
    expired, stale = now - grace, now - idempotency_retention
    finished = now - push_retention
    return SweepResult(
        children=await _drain(engine, lambda r: r.delete_children_of_expired(expired, batch_size)),
        jobs=await _drain(engine, lambda r: r.delete_expired_jobs(expired, batch_size)),
        idempotency_keys=await _drain(
            engine, lambda r: r.delete_old_idempotency_keys(stale, batch_size)
        ),
        pushes=await _drain(
            engine, lambda r: PushRepository(r.conn).delete_finished(finished, batch_size)
        ),
    )


async def sweep(engine: AsyncEngine, settings: Settings) -> None:
    """One round of the sweeper: expired rows, then ETA samples nobody compacted."""
    result = await sweep_once(
        engine,
        batch_size=settings.sweep_batch_size,
        idempotency_retention=timedelta(hours=settings.idempotency_retention_hours),
        push_retention=timedelta(hours=settings.push_retention_hours),
    )
    if result.total:
        log.info(
            "sweeper deleted %d jobs, %d children, %d idempotency records, %d pushes",
            result.jobs,
            result.children,
            result.idempotency_keys,
            result.pushes,
        )
    await compact_all_eta(engine, settings.sweep_batch_size)


def sweeper(engine: AsyncEngine, settings: Settings) -> PeriodicTask | None:
    """The sweeper loop, every ``sweep_interval_seconds``; None when that is 0 (off)."""
    interval = settings.sweep_interval_seconds
    if interval <= 0:
        return None
    # A random first delay spreads the replicas' sweeps apart.
    return PeriodicTask(
        "sweep",
        partial(sweep, engine, settings),
        interval,
        first_delay=lambda: random.uniform(0, min(interval, 5.0)),
    )
