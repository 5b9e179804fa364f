"""The messages of one SSE connection: hello, ``job.sync``, the log from the client's
position, then the live stream, one message per HTTP chunk.

One message per chunk matters to the mobile clients: React Native's XHR on Android hands
the SDK the body one read at a time (8 KiB, never across an HTTP chunk), and the SDK
parses each read on its own, so a message split across two reads is lost. Every message is
therefore its own chunk, and no message is larger than ``max_event_bytes``.

Nothing a client has not read yet is held in memory beyond one bounded buffer: the replay
is read from the event log a page at a time as the client reads, and so is whatever a client
missed while its live buffer was full.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from app.db import eventlog
from app.db.repository import Owner
from app.domain.clock import now_ms
from app.domain.views import event_view
from app.observability import Metrics
from app.realtime.hub import HEARTBEAT, Hub, Subscriber
from app.realtime.wire import encode, fit, fit_json

log = logging.getLogger("seenn.realtime")
PAGE = 32  # events (or jobs) read from the database at a time


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


@dataclass
class StreamPlan:
    """What the connect decided: where the client is and which jobs to sync."""

    owner: Owner
    hello: dict[str, str]
    start: int  # the seq the client already has (``connected``'s id)
    sync_ids: list[str]
    retry_ms: int
    max_event_bytes: int


class Delivery:
    """Produces the connection's messages; each ``yield`` is one HTTP chunk. While it
    waits for live events, the hub may write them to the connection itself."""

    def __init__(
        self, plan: StreamPlan, sub: Subscriber, hub: Hub, engine: Any, metrics: Metrics
    ) -> None:
        self.plan = plan
        self.sub = sub
        self.hub = hub
        self.engine = engine
        self.metrics = metrics
        self._stop: str | None = None  # why reading the log ended the stream

    async def messages(self) -> AsyncIterator[bytes]:
        plan, sub = self.plan, self.sub
        # The reconnection hint rides on the first message: one chunk, ignored by parsers
        # that only know event/data/id.
        hello = encode(plan.start, "connected", _json(plan.hello))
        yield f"retry: {plan.retry_ms}\n".encode() + hello
        reason: str | None = None
        try:
            async for message in self._sync():
                yield message
            reason = sub.reason
            catch_up = True  # first from the log up to the hub's position, then live
            while reason is None:
                if catch_up or sub.overflowed:
                    catch_up = False
                    async for message in self._from_log():
                        yield message
                    reason = sub.reason or self._stop
                    continue
                await sub.wait(direct=True)  # live events may go straight to the wire
                while not sub.empty():
                    seq, data = sub.pop()
                    if seq > sub.sent:  # the log already gave what overlaps
                        sub.sent = seq
                        self._delivered(1)
                        yield data
                if sub.beat_due:
                    sub.beat_due = False
                    yield HEARTBEAT
                if not sub.overflowed:
                    reason = sub.reason
        except _Unavailable:
            reason = "unavailable"
        idle_ms = int((time.monotonic() - sub.last_event) * 1000)
        yield encode(None, "connection.idle", _json({"reason": reason, "idleTime": idle_ms}))

    def _delivered(self, n: int) -> None:
        self.sub.last_event = time.monotonic()
        self.metrics.events_delivered.inc(n)

    async def _sync(self) -> AsyncIterator[bytes]:
        ids = self.plan.sync_ids
        for i in range(0, len(ids), PAGE):
            page = ids[i : i + PAGE]
            rows = await self._read(eventlog.jobs_by_id, self.plan.owner, page, now_ms())
            for row in rows:
                yield fit_json(None, "job.sync", event_view(row), self.plan.max_event_bytes)
            if self.sub.reason is not None:
                return

    async def _from_log(self) -> AsyncIterator[bytes]:
        """Every event after ``sent`` up to the hub's position, a page at a time; later
        events reach the (re-armed) buffer. A gap (pruned events) ends the stream: the
        client reconnects with its last id and gets ``job.sync``."""
        sub = self.sub
        sub.rearm()
        upto = self.hub.position(sub.stream_id)
        while sub.sent < upto and sub.reason is None:
            rows = await self._read(eventlog.page, sub.stream_id, sub.sent, upto, PAGE)
            if not rows or rows[0]["seq"] != sub.sent + 1:
                self._stop = "resync"
                return
            for row in rows:
                seq = row["seq"]
                sub.sent = seq
                if sub.wants(seq, row["job_id"], row["parent_id"]):
                    self._delivered(1)
                    yield fit(seq, row["event"], row["payload"], self.plan.max_event_bytes)
                if sub.reason is not None:
                    return

    async def _read(self, query: Any, *args: Any) -> list[Any]:
        """One short read on a pooled connection (never held while the client reads)."""
        try:
            async with self.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                return list(await query(conn, *args))
        except Exception as exc:
            log.warning("SSE stream could not read the database", exc_info=True)
            raise _Unavailable from exc


class _Unavailable(Exception):
    """The database could not be read: the stream says goodbye and the client resumes."""
