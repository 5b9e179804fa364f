"""The one shape of a background task: ``start()`` it in the lifespan, ``await stop()`` it
on the way out. :class:`PeriodicTask` is that shape for work done every few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("seenn.background")


class BackgroundTask(Protocol):
    """What the lifespan starts and stops (see :class:`app.background.Background`)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class PeriodicTask:
    """Runs ``body`` every ``interval`` seconds (after ``first_delay``) until stopped; a
    failure (a database outage) is logged and the next round tries again."""

    def __init__(
        self,
        name: str,
        body: Callable[[], Awaitable[object]],
        interval: float,
        first_delay: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.name = name
        self.body = body
        self.interval = interval
        self.first_delay = first_delay
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"seenn-{self.name}")

    async def stop(self) -> None:
        """Cancel the loop and wait for it (a batch in flight rolls back)."""
        if self.task is None:
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay())
        while True:
            try:
                await self.body()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database outage must not end the loop
                log.warning("%s failed: %s: %s", self.name, exc.__class__.__name__, exc)
            await asyncio.sleep(self.interval)
