"""An app-wide live feed for dashboard sessions, woken by the realtime hub.

The SSE endpoint for SDKs follows one user's stream; a dashboard shows every user's jobs
of an app and mode. Each (app, mode) with dashboards open here has one reader task: on
every wake-up of the hub (a local write, or a NOTIFY from another replica) and at least
every poll interval, it compares the app's stream positions with the ones it has sent,
reads the new events of the streams that moved, and queues the same bytes to every
dashboard connection of that app and mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

from app.db.dashboard_repository import DashboardRepository
from app.db.repository import Owner
from app.realtime.hub import Hub, encode

log = logging.getLogger("seenn.dashboard")
_MIN_GAP = 0.05  # seconds between two reads of one app's streams (coalesces bursts)


@dataclass(eq=False)
class Watcher:
    """One dashboard connection: a bounded queue of SSE messages."""

    maxsize: int
    buffer: deque[bytes] = field(default_factory=deque)
    overflowed: bool = False
    _waiter: asyncio.Future[None] | None = None

    def offer(self, data: bytes) -> None:
        if self.overflowed:
            return
        if len(self.buffer) >= self.maxsize:
            self.overflowed = True  # the browser reconnects and resynchronises
        else:
            self.buffer.append(data)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, wait: float) -> list[bytes] | None:
        """Everything queued (an empty list at overflow), or None after ``wait`` seconds."""
        if not self.buffer and not self.overflowed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(wait):
                    await self._waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        if self.overflowed:
            return []
        items = list(self.buffer)
        self.buffer.clear()
        return items


@dataclass(eq=False)
class _OwnerFeed:
    owner: Owner
    positions: dict[int, int]
    watchers: set[Watcher] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class DashboardFeed:
    """Per-(app, mode) readers of the event log, for dashboard connections on this replica."""

    def __init__(self, hub: Hub, poll_interval: float, buffer: int) -> None:
        self.hub = hub
        self.poll_interval = poll_interval
        self.buffer = buffer
        self._feeds: dict[Owner, _OwnerFeed] = {}
        hub.observers.append(self._on_wake)

    def _on_wake(self, _payload: str) -> None:
        for feed in self._feeds.values():
            feed.wake.set()

    async def subscribe(self, owner: Owner) -> Watcher:
        """A new connection; it gets every event committed after this returns."""
        feed = self._feeds.get(owner)
        if feed is None:
            async with self.hub.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                positions = await DashboardRepository(conn).stream_positions(owner)
            feed = self._feeds.get(owner)  # another connection may have won the race
            if feed is None:
                feed = _OwnerFeed(owner, positions)
                feed.task = asyncio.create_task(self._run(feed))
                self._feeds[owner] = feed
        watcher = Watcher(self.buffer)
        feed.watchers.add(watcher)
        return watcher

    def unsubscribe(self, owner: Owner, watcher: Watcher) -> None:
        feed = self._feeds.get(owner)
        if feed is None:
            return
        feed.watchers.discard(watcher)
        if not feed.watchers:
            del self._feeds[owner]
            if feed.task is not None:
                feed.task.cancel()

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.hub.observers.remove(self._on_wake)
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            if feed.task is not None:
                feed.task.cancel()
                with contextlib.suppress(BaseException):
                    await feed.task

    async def _run(self, feed: _OwnerFeed) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await feed.wake.wait()
            feed.wake.clear()
            try:
                await self._read(feed)
            except asyncio.CancelledError:
                raise
            except Exception:  # a database blip: the next round catches up
                log.warning("dashboard feed read failed", exc_info=True)
            await asyncio.sleep(_MIN_GAP)

    async def _read(self, feed: _OwnerFeed) -> None:
        async with self.hub.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            repo = DashboardRepository(conn)
            now = await repo.stream_positions(feed.owner)
            # A committed last_seq means every event up to it is committed (same
            # transaction), so reading up to it never leaves a gap behind.
            ranges = [
                (stream, feed.positions.get(stream, 0), last)
                for stream, last in now.items()
                if last > feed.positions.get(stream, 0)
            ]
            rows = await repo.read_events(ranges) if ranges else []
        feed.positions.update(now)
        for row in rows:
            data = encode(None, row["event"], row["payload"])
            for watcher in list(feed.watchers):
                watcher.offer(data)
