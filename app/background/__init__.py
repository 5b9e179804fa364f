"""The process's background work, in one home: each task is started by the lifespan with
``start()`` and ended with ``await stop()`` (:class:`~app.background.loop.BackgroundTask`).

- the sweeper (``sweeper.py``): expired jobs, old idempotency records, finished pushes, and
  the ETA samples nobody compacted, every ``SEENN_SWEEP_INTERVAL_SECONDS``;
- the event pruner (``event_pruner.py``): events older than the retention, every minute;
- ETA compaction (``eta_compaction.py``): a key's new completion samples, soon after the
  write that appended them (on demand, ``poke``);
- push delivery (``app/push/worker.py``): the outbox's due pushes to APNs.

All of them are safe to run in every replica at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from app.background.eta_compaction import EtaCompactor
from app.background.event_pruner import event_pruner
from app.background.loop import BackgroundTask, PeriodicTask
from app.background.sweeper import sweeper
from app.observability import Metrics
from app.push.worker import PushDelivery
from app.settings import Settings


@dataclass
class Background:
    """This process's background tasks."""

    eta_compactor: EtaCompactor
    sweeper: PeriodicTask | None
    event_pruner: PeriodicTask
    push_delivery: PushDelivery

    def tasks(self) -> list[BackgroundTask]:
        """In the order they start (they stop in the reverse one)."""
        found: list[BackgroundTask | None] = [
            self.eta_compactor,
            self.event_pruner,
            self.sweeper,
            self.push_delivery,
        ]
        return [task for task in found if task is not None]

    def start(self) -> None:
        for task in self.tasks():
            task.start()

    async def stop(self) -> None:
        for task in reversed(self.tasks()):
            await task.stop()


def start_background(
    engine: AsyncEngine,
    settings: Settings,
    metrics: Metrics,
    compaction_engine: AsyncEngine | None = None,
) -> Background:
    """Start every task. ``compaction_engine`` is ETA compaction's own small pool: under a
    burst every connection of the main pool can be held by writers queued on one row, and
    compaction waiting behind them lets pending samples pile up for every reader."""
    background = Background(
        eta_compactor=EtaCompactor(compaction_engine or engine),
        sweeper=sweeper(engine, settings),
        event_pruner=event_pruner(engine, settings),
        push_delivery=PushDelivery(engine, settings, metrics),
    )
    background.start()
    return background
