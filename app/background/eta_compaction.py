"""ETA compaction: folds the completion samples writes append into each key's statistics
(soon after the write, and as the sweeper's safety net)."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.eta_repository import EtaRepository
from app.db.repository import Owner, Repository
from app.domain import eta

log = logging.getLogger(__name__)


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

    def start(self) -> None:
        """Nothing to start: a task starts when a write pokes a key."""

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
