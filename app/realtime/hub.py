"""Per-process realtime fan-out: one LISTEN connection, a poll safety net, one log read per wake.

The event log is the truth; NOTIFY is only a wake-up. Each event is serialised once per
replica and the same bytes are queued to every matching subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]

log = logging.getLogger("seenn.realtime")
CHANNEL = "seenn_events"
POLL_ALL = "*"
_MAX_PAYLOAD = 4000  # far under PostgreSQL's 8000-byte NOTIFY limit

_READ_MANY = """
SELECT e.stream_id, e.seq, e.job_id, e.event, e.payload::text AS payload,
       e.payload->'parent'->>'parentJobId' AS parent_id
FROM unnest($1::bigint[], $2::bigint[]) AS p(stream_id, pos)
JOIN events e ON e.stream_id = p.stream_id AND e.seq > p.pos
ORDER BY e.stream_id, e.seq
"""


def plain_url(url: str) -> str:
    """A libpq-style URL for asyncpg (drops a SQLAlchemy ``+driver`` suffix)."""
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest


def encode(seq: int | None, event: str, data: str) -> bytes:
    """One SSE message; ``data`` is a single-line JSON text."""
    head = f"id: {seq}\r\n" if seq is not None else ""
    return f"{head}event: {event}\r\ndata: {data}\r\n\r\n".encode()


@dataclass(eq=False)
class Subscriber:
    """One client: a bounded queue of ``(seq, bytes)`` and the seq it already has."""

    stream_id: int
    floor: int
    job_id: str | None
    maxsize: int
    queue: asyncio.Queue[tuple[int, bytes]] = field(init=False)
    overflowed: bool = False

    OVERFLOW = -1  # sentinel seqs: the stream ends
    SHUTDOWN = -2

    def __post_init__(self) -> None:
        # One spare slot, so a stop sentinel always fits.
        self.queue = asyncio.Queue(self.maxsize + 1)

    def wants(self, seq: int, job_id: str, parent_id: str | None) -> bool:
        if seq <= self.floor:
            return False
        return self.job_id is None or job_id == self.job_id or parent_id == self.job_id

    def offer(self, seq: int, data: bytes) -> None:
        """Queue without waiting; a full queue evicts this client only."""
        if self.overflowed:
            return
        if self.queue.qsize() >= self.maxsize:
            self.overflowed = True
            self.queue.put_nowait((self.OVERFLOW, b""))
            return
        self.queue.put_nowait((seq, data))

    def stop(self) -> None:
        """Ask the stream to say goodbye (server shutdown)."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((self.SHUTDOWN, b""))


class Hub:
    """Reads new events for the streams that have subscribers here and fans them out."""

    def __init__(self, engine: Any, listen_url: str, poll_interval: float) -> None:
        self.engine = engine
        self.listen_url = plain_url(listen_url)
        self.poll_interval = poll_interval
        self.subs: dict[int, set[Subscriber]] = {}
        self.pos: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Set by sse-starlette when the server begins shutting down.
        self.shutdown_event = anyio.Event()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run()),
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._on_shutdown()),
        ]

    async def _on_shutdown(self) -> None:
        await self.shutdown_event.wait()
        for group in list(self.subs.values()):
            for sub in list(group):
                sub.stop()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    def add(self, sub: Subscriber) -> None:
        self.subs.setdefault(sub.stream_id, set()).add(sub)
        # An untracked stream starts at this subscriber's position; the subscriber reads
        # anything older from the log itself (backlog), so nothing falls between.
        if sub.stream_id not in self.pos:
            self.pos[sub.stream_id] = sub.floor

    def remove(self, sub: Subscriber) -> None:
        group = self.subs.get(sub.stream_id)
        if group is not None:
            group.discard(sub)
            if not group:
                del self.subs[sub.stream_id]
                self.pos.pop(sub.stream_id, None)

    def wake(self, payload: str = POLL_ALL) -> None:
        if payload == POLL_ALL or any(
            part.isdigit() and int(part) in self.subs for part in payload.split(",")
        ):
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            if not self.subs:
                continue
            try:
                await self.read_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a DB blip: the next round catches up from the log
                log.warning("event read failed", exc_info=True)
                await asyncio.sleep(min(self.poll_interval, 1.0))

    async def read_once(self) -> None:
        """One query for every active stream, then fan out in seq order."""
        streams = list(self.subs)
        positions = [self.pos.get(s, 0) for s in streams]
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            rows = await raw.driver_connection.fetch(_READ_MANY, streams, positions)
        for row in rows:
            stream_id, seq = row["stream_id"], row["seq"]
            if seq <= self.pos.get(stream_id, seq):
                continue
            self.pos[stream_id] = seq
            data = encode(seq, row["event"], row["payload"])
            for sub in self.subs.get(stream_id, ()):
                if sub.wants(seq, row["job_id"], row["parent_id"]):
                    sub.offer(seq, data)

    async def _listen(self) -> None:
        """Hold one LISTEN connection; reconnect with backoff, then catch up (poll-all)."""
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.listen_url, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: self.wake(payload))
                self.wake()
                delay = 0.5
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set():
                        await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("LISTEN connection lost; polling until it is back", exc_info=True)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            self.wake()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)


class PgNotifier:
    """Coalesces after-commit stream ids and sends at most one NOTIFY per ``window`` seconds."""

    def __init__(self, engine: Any, hub: Hub | None = None, window: float = 0.005) -> None:
        self.engine = engine
        self.hub = hub
        self.window = window
        self._pending: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    def notify(self, stream_ids: Iterable[int]) -> None:
        ids = set(stream_ids)
        if not ids:
            return
        self._pending |= ids
        if self.hub is not None:  # local subscribers need no round trip through the DB
            self.hub.wake(",".join(map(str, ids)))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(self.window)
        while self._pending:
            ids, self._pending = self._pending, set()
            payload = ",".join(map(str, sorted(ids)))
            if len(payload) > _MAX_PAYLOAD:
                payload = POLL_ALL
            try:
                # Outside any write transaction: NOTIFY in a write would serialise commits.
                async with self.engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    await raw.driver_connection.execute(
                        "SELECT pg_notify($1, $2)", CHANNEL, payload
                    )
            except Exception:  # the poll interval delivers anyway
                log.warning("NOTIFY failed", exc_info=True)
            await asyncio.sleep(self.window)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
