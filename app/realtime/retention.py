"""Prunes events older than the retention window in bounded batches (safe in every replica)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from app.db.eventlog import prune_batch

log = logging.getLogger("seenn.realtime")
BATCH = 5000


async def prune_once(engine: Any, retention_hours: float, batch: int = BATCH) -> int:
    """Delete expired events batch by batch (one short transaction each); total deleted."""
    total = 0
    while True:
        async with engine.begin() as conn:
            deleted = await prune_batch(conn, retention_hours, batch)
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)


async def _loop(engine: Any, retention_hours: float, interval: float) -> None:
    while True:
        try:
            await prune_once(engine, retention_hours)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("event pruning failed", exc_info=True)
        await asyncio.sleep(interval)


def start_pruner(engine: Any, retention_hours: float, interval: float = 60.0) -> asyncio.Task[None]:
    return asyncio.create_task(_loop(engine, retention_hours, interval))


async def stop_pruner(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
