"""Background maintenance: the sweeper deletes expired jobs and old idempotency records.

Safe to run in every replica at once: each batch is its own short transaction that picks
rows with ``SKIP LOCKED``, so sweepers share the work instead of waiting for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.eta_repository import EtaRepository
from app.db.push_repository import PushRepository
from app.db.repository import Owner, Repository
from app.db.sweep_repository import SweepRepository
from app.domain import eta
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


async def compact_eta(engine: AsyncEngine, owner: Owner, eta_key: str) -> int:
    """Fold one key's ETA completion samples into its statistics until none are left (each
    fold its own short transaction); how many were folded."""
    folded = 0
    while True:
        async with engine.begin() as conn:
            n = await eta.compact(Repository(conn), owner, eta_key)
        folded += n
        if n == 0:
            return folded


async def compact_all_eta(engine: AsyncEngine, batch: int = 500) -> int:
    """Fold the samples of every key that has some (the sweeper's safety net for samples
    whose writer's process ended before compacting them)."""
    async with engine.connect() as conn:
        keys = await EtaRepository(conn).pending_keys(batch)
    folded = 0
    for owner, key in keys:
        folded += await compact_eta(engine, owner, key)
    return folded


# How long a key's first new sample waits for others before they are folded together.
COMPACTION_DELAY = 0.1


class EtaCompactor:
    """Compacts the ETA keys a write appended completion samples to, soon after it commits:
    at most one task per key in this process (a sample written meanwhile is taken by that
    task's next fold). Readers count pending samples, so compaction only bounds their work.
    """

    def __init__(self, engine: AsyncEngine, delay: float = COMPACTION_DELAY) -> None:
        self.engine = engine
        self.delay = delay
        self._tasks: dict[tuple[Owner, str], asyncio.Task[None]] = {}

    def poke(self, keys: set[tuple[Owner, str]]) -> None:
        for key in keys:
            if key not in self._tasks:
                task = asyncio.create_task(self._run(*key))
                self._tasks[key] = task
                task.add_done_callback(partial(self._done, key))

    def _done(self, key: tuple[Owner, str], _: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)

    async def _run(self, owner: Owner, eta_key: str) -> None:
        try:
            # Completions of a busy key come in bursts: let them gather, then fold them
            # in one transaction rather than one each.
            await asyncio.sleep(self.delay)
            await compact_eta(self.engine, owner, eta_key)
        except Exception as exc:  # the samples stay; the next fold or the sweeper takes them
            log.warning("ETA compaction failed: %s: %s", exc.__class__.__name__, exc)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_sweeper(engine: AsyncEngine, settings: Settings) -> None:
    """Sweep every ``sweep_interval_seconds`` until cancelled; errors are logged, not fatal."""
    interval = settings.sweep_interval_seconds
    # A random first delay spreads the replicas' sweeps apart.
    await asyncio.sleep(random.uniform(0, min(interval, 5.0)))
    while True:
        try:
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
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a database outage must not end the sweeper
            log.warning("sweep failed: %s: %s", exc.__class__.__name__, exc)
        await asyncio.sleep(interval)


def start_sweeper(engine: AsyncEngine, settings: Settings) -> asyncio.Task[None] | None:
    """Start the sweeper task, unless ``sweep_interval_seconds`` is 0."""
    if settings.sweep_interval_seconds <= 0:
        return None
    return asyncio.create_task(run_sweeper(engine, settings), name="seenn-sweeper")


async def stop_sweeper(task: asyncio.Task[None] | None) -> None:
    """Cancel the sweeper and wait for it (a batch in flight rolls back)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
