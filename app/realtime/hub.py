"""Per-process realtime fan-out: one LISTEN connection, a poll safety net, one log read per wake.

The event log is the truth; NOTIFY is only a wake-up. Each event is serialised once per
replica and the same bytes are queued to every matching subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

import anyio
import asyncpg  # type: ignore[import-untyped]

from app.db import realtime_queries as sql
from app.db.realtime_queries import CHANNEL
from app.realtime.wire import HEARTBEAT, encode, fit

__all__ = ["HEARTBEAT", "Hub", "PgNotifier", "Subscriber", "Wire", "encode", "frame", "plain_url"]

log = logging.getLogger("seenn.realtime")
POLL_ALL = "*"
_MAX_PAYLOAD = 4000  # far under PostgreSQL's 8000-byte NOTIFY limit
_OWN_TIMEOUT = 10.0  # seconds a read or NOTIFY on the hub's connection may take
T = TypeVar("T")

NO_STREAM = 0  # the group of subscribers whose user has no stream yet


def plain_url(url: str) -> str:  # pragma: no mutate block (see docs/mutation.md)
    """A libpq-style URL for asyncpg (drops a SQLAlchemy ``+driver`` suffix)."""
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest


class Wire(Protocol):
    """Where a stream's bytes go when written directly (the HTTP server's connection)."""

    def writable(self) -> bool:
        """True when a write now would neither block nor queue behind back-pressure."""
        ...

    def write(self, chunks: bytes) -> None:
        """Write framed HTTP chunks (one SSE message each) to the connection now."""
        ...


class Event(NamedTuple):
    """One event read from the log, encoded once for every subscriber."""

    seq: int
    job_id: str
    parent_id: str | None
    data: bytes


def frame(data: bytes) -> bytes:
    """One SSE message as one HTTP/1.1 chunk (``size CRLF data CRLF``)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@dataclass(eq=False)
class Subscriber:
    """One client: a buffer of ``(seq, bytes)`` bounded in events and in bytes.

    Kept small on purpose (one deque, a future only while waiting): an idle SSE connection
    costs little more than its socket. A full buffer is emptied and marked ``overflowed``:
    the stream then reads what it missed from the event log, page by page as its client
    reads (so a slow client costs the log a few reads, never unbounded memory). The hub's
    ticker sends heartbeats and ends the stream at ``deadline`` (a monotonic time), so a
    connection needs no timer of its own.

    While the stream waits with nothing queued (``idle``) and its connection is writable,
    the hub writes a live event straight to the connection (``wire``): the same framed
    bytes for every subscriber, and no task woken per subscriber. Anything else (a
    connection under back-pressure, a message already queued, a heartbeat, a goodbye) goes
    through the buffer and the stream's own task, in order.
    """

    stream_id: int
    floor: int
    job_id: str | None
    maxsize: int
    deadline: float = math.inf
    # (app_id, mode, user_id): how a subscriber waiting on NO_STREAM finds its stream.
    owner_key: tuple[str, str, str] | None = None
    max_bytes: int = 1 << 20
    buffer: deque[tuple[int, bytes]] = field(init=False, default_factory=deque)
    size: int = field(init=False, default=0)  # bytes in ``buffer``
    overflowed: bool = False
    reason: str | None = None  # set when the stream must say goodbye and end
    expiry_reason: str = "maxLifetime"  # the goodbye at ``deadline``
    beat_due: bool = False
    sent: int = field(init=False, default=0)  # the newest seq written to the client
    last_event: float = field(init=False, default_factory=time.monotonic)
    wire: Wire | None = None  # set by the HTTP layer when it can be written directly
    abort: Callable[[], None] | None = None  # cuts the connection (set by the HTTP layer)
    idle: bool = field(init=False, default=False)  # parked in ``wait`` with nothing queued
    _waiter: asyncio.Future[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.sent = self.floor

    def wants(self, seq: int, job_id: str, parent_id: str | None) -> bool:
        if seq <= self.floor:
            return False
        return self.job_id is None or job_id == self.job_id or parent_id == self.job_id

    def _wake(self) -> None:
        self.idle = False  # from now on, everything goes through the buffer, in order
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def deliver(self, events: list[Event], framed: bytes | None, now: float) -> int:
        """Write ``events`` (in seq order; ``framed``: their chunks joined, or None to
        build them) in one write if the stream waits and its connection is writable, and
        return how many; else queue each one as ``offer`` does and return 0."""
        wire = self.wire
        if self.idle and wire is not None and events[0].seq > self.sent and wire.writable():
            if framed is None:
                framed = b"".join(frame(e.data) for e in events)
            wire.write(framed)
            self.sent = events[-1].seq
            self.last_event = now
            return len(events)
        for event in events:
            self.offer(event.seq, event.data)
        return 0

    def offer(self, seq: int, data: bytes) -> None:
        """Queue without waiting; a full buffer is dropped (the stream re-reads the log)."""
        if self.overflowed:
            return
        if len(self.buffer) >= self.maxsize or self.size + len(data) > self.max_bytes:
            self.overflowed = True
            self.buffer.clear()
            self.size = 0
        else:
            self.buffer.append((seq, data))
            self.size += len(data)
        self._wake()

    def rearm(self) -> None:
        """Empty the buffer and take offers again (the caller reads the log up to here)."""
        self.overflowed = False
        self.buffer.clear()
        self.size = 0

    def close(self, reason: str) -> None:
        """Ask the stream to send ``connection.idle`` with ``reason`` and end."""
        if self.reason is None:
            self.reason = reason
            self._wake()

    def stop(self) -> None:
        """Ask the stream to say goodbye (server shutdown)."""
        self.close("shutdown")

    def expire(self) -> None:
        """Ask the stream to say goodbye (it reached its maximum lifetime)."""
        self.close(self.expiry_reason)

    def beat(self) -> None:
        """A heartbeat, unless messages are already waiting (they keep the line alive)."""
        if not self.buffer and not self.overflowed and self.reason is None:
            self.beat_due = True
            self._wake()

    def empty(self) -> bool:
        return not self.buffer

    def pop(self) -> tuple[int, bytes]:
        item = self.buffer.popleft()
        self.size -= len(item[1])
        return item

    async def wait(self, direct: bool = False) -> None:
        """Until there is something to do: a message, an overflow, a goodbye or a beat.
        With ``direct``, the hub may meanwhile write live events straight to ``wire``."""
        while not (self.buffer or self.overflowed or self.reason or self.beat_due):
            self._waiter = asyncio.get_running_loop().create_future()
            self.idle = direct and self.wire is not None
            try:
                await self._waiter
            finally:
                self.idle = False
                self._waiter = None


class Hub:  # pragma: no mutate block (served streams only: see docs/mutation.md)
    """Reads new events for the streams that have subscribers here and fans them out."""

    def __init__(
        self,
        engine: Any,
        listen_url: str,
        poll_interval: float,
        heartbeat: float = 15.0,
        max_event_bytes: int = 1 << 30,
    ) -> None:
        self.engine = engine
        self.max_event_bytes = max_event_bytes
        self.listen_url = plain_url(listen_url)
        self.poll_interval = poll_interval
        self.heartbeat = heartbeat
        self.subs: dict[int, set[Subscriber]] = {}
        self.pos: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # The LISTEN connection also serves the log reads and NOTIFYs of this replica, so
        # delivery never queues for a pooled connection behind the writes.
        self._own: Any = None
        self._own_lock = asyncio.Lock()
        # Set by sse-starlette when the server begins shutting down.
        self.shutdown_event = anyio.Event()
        self.shutdown_grace = 2.0  # seconds a stream has to say goodbye before it is cut
        self.read_lag: Any = None  # a Histogram (seconds from write to read), set by the runtime
        self.events_delivered: Any = None  # a Counter of events written directly, likewise
        self.fanout_time: Any = None  # Histograms: first to last direct write of one read,
        self.wake_to_write: Any = None  # and first wake-up with news to that last write
        self.events_queued: Any = None  # a Counter of live events left to a stream's task
        self._news_at: float | None = None  # monotonic time of the first unread wake-up
        # Told of every wake-up payload, before the per-stream filter (the dashboard's feed).
        self.observers: list[Callable[[str], None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run()),
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._on_shutdown()),
            asyncio.create_task(self._tick()),
        ]

    async def _tick(self) -> None:
        """One timer for every stream here: heartbeats, and goodbyes at maximum lifetime."""
        period = min(self.heartbeat, 1.0)
        next_beat = time.monotonic() + self.heartbeat
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            beat = now >= next_beat
            if beat:
                next_beat = now + self.heartbeat
            for group in list(self.subs.values()):
                for sub in list(group):
                    if now >= sub.deadline:
                        sub.expire()
                    elif beat:
                        sub.beat()

    async def _on_shutdown(self) -> None:
        """Every stream says goodbye; one still open after the grace period (its client
        reads nothing) is cut."""
        await self.shutdown_event.wait()
        for group in list(self.subs.values()):
            for sub in list(group):
                sub.stop()
        await asyncio.sleep(self.shutdown_grace)
        for group in list(self.subs.values()):
            for sub in list(group):
                if sub.abort is not None:
                    sub.abort()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    def add(self, sub: Subscriber, head: int | None = None) -> None:
        """Follow ``sub``'s stream. An untracked stream starts at ``head`` (the committed
        position the subscriber saw; default its floor): the subscriber reads anything
        older from the log itself, page by page, so the hub never loads a replay."""
        self.subs.setdefault(sub.stream_id, set()).add(sub)
        if sub.stream_id not in self.pos:
            self.pos[sub.stream_id] = sub.floor if head is None else max(head, sub.floor)

    def position(self, stream_id: int) -> int:
        """The newest seq of ``stream_id`` already offered to its subscribers here; every
        later event will be offered."""
        return self.pos.get(stream_id, 0)

    def remove(self, sub: Subscriber) -> None:
        group = self.subs.get(sub.stream_id)
        if group is not None:
            group.discard(sub)
            if not group:
                del self.subs[sub.stream_id]
                self.pos.pop(sub.stream_id, None)

    def wake(self, payload: str = POLL_ALL) -> None:
        """Wake the reader if ``payload`` (``stream:seq,...``, or ``*``) has news for us."""
        for observe in self.observers:
            observe(payload)
        if payload == POLL_ALL or any(self._behind(part) for part in payload.split(",")):
            if self._news_at is None:
                self._news_at = time.monotonic()
            self._wake.set()

    def _behind(self, part: str) -> bool:
        stream, _, seq = part.partition(":")
        if not stream.isdigit():
            return False
        if int(stream) not in self.subs:
            # A stream we do not follow may be the first write of a waiting subscriber's user.
            return NO_STREAM in self.subs
        # Our own writes arrive twice (directly and via NOTIFY): the echo finds us caught up.
        return not seq.isdigit() or self.pos.get(int(stream), 0) < int(seq)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            news_at, self._news_at = self._news_at, None
            if not self.subs:
                continue
            try:
                await self.read_once(news_at)
            except asyncio.CancelledError:
                raise
            except Exception:  # a DB blip: the next round catches up from the log
                log.warning("event read failed", exc_info=True)
                await asyncio.sleep(min(self.poll_interval, 1.0))

    async def _find_new_streams(self) -> None:
        """Move subscribers waiting on NO_STREAM to their user's stream once it exists.

        Such a subscriber has seen nothing, so the stream is read from its start: lowering
        a followed stream's position re-reads events its other subscribers skip by seq.
        """
        waiting = [sub for sub in self.subs.get(NO_STREAM, ()) if sub.owner_key is not None]
        if not waiting:
            return
        keys = list({sub.owner_key for sub in waiting if sub.owner_key is not None})
        columns = [list(column) for column in zip(*keys, strict=True)]
        rows = await self.run_own(lambda c: sql.find_streams(c, columns, _OWN_TIMEOUT))
        found = {(r["app_id"], r["mode"], r["user_id"]): r["stream_id"] for r in rows}
        for sub in waiting:
            stream_id = found.get(sub.owner_key)  # type: ignore[arg-type]
            if stream_id is None:
                continue
            self.remove(sub)
            sub.stream_id = stream_id
            self.subs.setdefault(stream_id, set()).add(sub)
            self.pos[stream_id] = 0

    async def read_once(self, news_at: float | None = None) -> None:
        """One query for every active stream, then fan out in seq order.

        Each event is encoded and framed once. A subscriber whose stream waits gets every
        new event of this read in ONE write (each message still its own HTTP chunk), so the
        socket writes per subscriber follow the reads, not the events: under load a read
        brings more events and the fan-out costs no more writes. ``news_at``: when the hub
        was first woken for this read (for ``wake_to_write``).
        """
        if NO_STREAM in self.subs:
            await self._find_new_streams()
        streams = list(self.subs)
        positions = [self.pos.get(s, 0) for s in streams]
        rows = await self.run_own(lambda c: sql.read_many(c, streams, positions, _OWN_TIMEOUT))
        now = time.monotonic()
        wall = time.time()
        direct = queued = 0
        for stream_id, group in itertools.groupby(rows, key=lambda r: r["stream_id"]):
            events: list[Event] = []
            pos = self.pos.get(stream_id)
            for row in group:
                seq = row["seq"]
                if pos is not None and seq <= pos:
                    continue
                pos = seq
                if self.read_lag is not None:
                    self.read_lag.observe(max(0.0, wall - row["created_at"].timestamp()))
                data = fit(seq, row["event"], row["payload"], self.max_event_bytes)
                events.append(Event(seq, row["job_id"], row["parent_id"], data))
            if not events:
                continue
            self.pos[stream_id] = events[-1].seq
            first = events[0].seq
            every: bytes | None = None  # all of them, framed and joined once
            for sub in list(self.subs.get(stream_id, ())):
                if sub.job_id is None and sub.floor < first:
                    if every is None:
                        every = b"".join(frame(e.data) for e in events)
                    written = sub.deliver(events, every, now)
                    direct += written
                    queued += len(events) - written
                    continue
                mine = [e for e in events if sub.wants(e.seq, e.job_id, e.parent_id)]
                if mine:
                    written = sub.deliver(mine, None, now)
                    direct += written
                    queued += len(mine) - written
        if queued and self.events_queued is not None:
            self.events_queued.inc(queued)
        if direct:
            self._observe_fanout(direct, now, news_at)

    def _observe_fanout(self, direct: int, read_at: float, news_at: float | None) -> None:
        """Count ``direct`` writes; time them from the read's rows (``read_at``) and from
        the first wake-up (``news_at``) to now, the last write."""
        if self.events_delivered is None:
            return
        last = time.monotonic()
        self.events_delivered.inc(direct)
        if self.fanout_time is not None:
            self.fanout_time.observe(last - read_at)
        if self.wake_to_write is not None and news_at is not None:
            self.wake_to_write.observe(last - news_at)

    async def run_own(self, command: Callable[[Any], Awaitable[T]]) -> T:
        """Run one command on the hub's own connection, else on a pooled one."""
        conn = self._own
        if conn is not None and not conn.is_closed():
            async with self._own_lock:
                if not conn.is_closed():
                    return await command(conn)
        async with self.engine.connect() as pooled:
            raw = await pooled.get_raw_connection()
            return await command(raw.driver_connection)

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
                self._own = conn
                self.wake()
                delay = 0.5
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set():
                        async with self._own_lock:
                            await sql.ping(conn, _OWN_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("LISTEN connection lost; polling until it is back", exc_info=True)
            finally:
                self._own = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            self.wake()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)


class PgNotifier:  # pragma: no mutate block (see docs/mutation.md)
    """Coalesces after-commit ``(stream, seq)`` pairs into at most one NOTIFY per ``window``.

    The payload names each stream with its newest seq (``stream:seq,...``), so a replica
    that already has those events (this one, woken directly) skips the echo.
    """

    def __init__(self, engine: Any, hub: Hub | None = None, window: float = 0.005) -> None:
        self.engine = engine
        self.hub = hub
        self.window = window
        self._pending: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    def notify(self, streams: Iterable[tuple[int, int]]) -> None:
        local = []
        for stream_id, seq in streams:
            if seq > self._pending.get(stream_id, -1):
                self._pending[stream_id] = seq
            local.append(f"{stream_id}:{seq}")
        if not local:
            return
        if self.hub is not None:  # local subscribers need no round trip through the DB
            self.hub.wake(",".join(local))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(self.window)
        while self._pending:
            pending, self._pending = self._pending, {}
            payload = ",".join(f"{s}:{q}" for s, q in sorted(pending.items()))
            if len(payload) > _MAX_PAYLOAD:
                payload = POLL_ALL
            try:
                # Outside any write transaction: NOTIFY in a write would serialise commits.
                await self._send(payload)
            except Exception:  # the poll interval delivers anyway
                log.warning("NOTIFY failed", exc_info=True)
            await asyncio.sleep(self.window)

    async def _send(self, payload: str) -> None:
        if self.hub is not None:
            await self.hub.run_own(lambda c: sql.notify(c, payload, _OWN_TIMEOUT))
            return
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await sql.notify(raw.driver_connection, payload)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
