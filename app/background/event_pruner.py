"""Prunes events older than the retention window in bounded batches (safe in every replica)."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from app.background.loop import PeriodicTask
from app.db.eventlog import prune_batch
from app.settings import Settings

BATCH = 5000
INTERVAL = 60.0


async def prune_once(engine: AsyncEngine, retention_hours: float, batch: int = BATCH) -> int:
    """Delete expired events batch by batch (one short transaction each); total deleted."""
    total = 0
    while True:
        async with engine.begin() as conn:
            deleted = await prune_batch(conn, retention_hours, batch)
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)


def event_pruner(engine: AsyncEngine, settings: Settings) -> PeriodicTask:
    """The loop that prunes the event log every minute."""
    return PeriodicTask(
        "event pruning", lambda: prune_once(engine, settings.event_retention_hours), INTERVAL
    )
