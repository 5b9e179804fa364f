"""GET /v1/sse: a user's job events as Server-Sent Events, resumable by event id."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from app.api.deps import bearer_key, principal_for_key, require_user
from app.api.sse_limits import acquire_sse_slot
from app.domain.commands import ULID_RE, USER_ID_MAX, is_identifier
from app.domain.errors import JobNotFound, NotFound, ValidationFailed
from app.domain.keys import Principal, owner_of
from app.observability import Metrics
from app.realtime import connect
from app.realtime.hub import Hub, Subscriber, frame
from app.realtime.stream import Delivery, StreamPlan
from app.state import app_state

log = logging.getLogger("seenn.realtime")
router = APIRouter(tags=["realtime"])
_SEQ_RE = re.compile(r"^\d{1,18}$")
# Where the outermost app leaves the server's own ``send`` (app/main.py), so that the stream
# can reach the connection beneath the middlewares' per-message wrappers.
RAW_SEND = "seenn.raw_send"


def _key(request: Request) -> str:
    if request.headers.get("authorization"):
        return bearer_key(request)
    query = request.query_params
    key = query.get("access_token") or query.get("apiKey") or query.get("key")
    if key:
        return key.strip()
    return bearer_key(request)  # raises the usual 401


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if raw is None or raw.strip() == "":
        return None
    if not _SEQ_RE.fullmatch(raw.strip()):
        raise ValidationFailed(
            "lastEventId must be a non-negative integer event id",
            "lastEventId",
            value=raw[:100],
        )
    return int(raw.strip())


def _require_scope(principal: Principal, user_id: str, job_id: str | None) -> None:
    """A token streams only its user; a token limited to jobs streams one of them."""
    require_user(principal, user_id)
    if principal.job_ids is not None:
        if job_id is None:
            raise NotFound(
                "This token reads only some jobs: pass jobId (one of them)", {"field": "jobId"}
            )
        if job_id not in principal.job_ids:
            raise JobNotFound(job_id)


def _token_deadline(principal: Principal, margin: float) -> float | None:
    """When (monotonic) a token's stream says goodbye: ``margin`` before the token expires,
    or half its remaining life when that is shorter."""
    if principal.expires_at is None:
        return None
    remaining = principal.expires_at - time.time()
    return time.monotonic() + remaining - min(margin, max(remaining, 0.0) / 2)


@router.get(
    "/sse",
    summary="Stream a user's job events (Server-Sent Events)",
    response_class=EventSourceResponse,
)
async def sse(request: Request) -> EventSourceResponse:
    """Auth by Bearer key or token, or the ``access_token``/``apiKey``/``key`` query (for
    ``EventSource``); resume with ``Last-Event-ID``."""
    principal = await principal_for_key(request, _key(request))
    request.state.principal = principal
    user_id = request.query_params.get("userId")
    if user_id is None or not is_identifier(user_id, USER_ID_MAX):
        raise ValidationFailed("userId is required (1-255 characters)", "userId")
    job_id = request.query_params.get("jobId") or None
    if job_id is not None and not ULID_RE.fullmatch(job_id):
        raise ValidationFailed("jobId must be a job id (ULID)", "jobId")
    _require_scope(principal, user_id, job_id)
    last_id = _last_event_id(request)
    owner = owner_of(principal)
    state = app_state(request)
    settings = state.settings
    hub: Hub = state.hub
    metrics: Metrics = state.metrics

    slot = acquire_sse_slot(request, principal, user_id)
    sub: Subscriber | None = None
    try:
        # All database work of the connect happens here; the connection is back in the
        # pool before the stream starts (the stream reads the log in short pages).
        async with state.engine.connect() as conn:
            # Autocommit: READ COMMITTED gives each statement its own snapshot anyway, and
            # it saves the BEGIN and ROLLBACK round trips.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            begin = await connect.starting_point(
                conn, owner, user_id, last_id, settings.sse_max_replay_events
            )
            start = begin.start
            # Subscribe before reading anything: the stream reads the log up to the hub's
            # position, and the hub offers everything after it.
            deadline = time.monotonic() + settings.sse_max_connection_seconds
            expiry = _token_deadline(principal, settings.sse_token_expiry_margin_seconds)
            token_expires_first = expiry is not None and expiry < deadline
            if expiry is not None and token_expires_first:
                deadline = expiry
            sub = Subscriber(
                begin.stream_id,
                start,
                job_id,
                settings.sse_client_buffer,
                deadline,
                (owner.app_id, owner.mode, user_id),
                settings.sse_client_buffer_bytes,
            )
            if token_expires_first:
                sub.expiry_reason = "token_expired"  # reconnect with a new token
            hub.add(sub, begin.head)
            slot.on_replaced(sub.close)
            if hub.shutdown_event.is_set():  # draining already: say goodbye at once
                sub.stop()
            sync: list[str] = []
            if not begin.resume:
                sync = await connect.jobs_to_sync(
                    conn,
                    owner,
                    user_id,
                    job_id,
                    settings.sync_finished_window_hours,
                    settings.sse_sync_limit,
                )
    except BaseException:
        if sub is not None:
            hub.remove(sub)
        slot.release()
        raise

    hello = {"userId": user_id} if job_id is None else {"userId": user_id, "jobId": job_id}
    plan = StreamPlan(
        owner, hello, start, sync, settings.sse_retry_ms, settings.sse_max_event_bytes
    )
    delivery = Delivery(plan, sub, hub, state.engine, metrics)

    async def events() -> AsyncIterator[bytes]:
        metrics.sse_connections.inc()
        try:
            async for message in delivery.messages():
                yield message
        finally:
            metrics.sse_connections.dec()
            hub.remove(sub)
            slot.release()

    def cleanup() -> None:  # also runs when the generator never started
        hub.remove(sub)
        slot.release()

    response = StreamResponse(
        events(),
        background=BackgroundTask(cleanup),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        ping=0,  # the hub's ticker sends heartbeats: no timer task per connection
        shutdown_event=hub.shutdown_event,
        shutdown_grace_period=hub.shutdown_grace,
        send_timeout=settings.sse_send_timeout_seconds,
    )
    response.subscriber = sub
    response.direct = settings.sse_direct_writes
    return response


class _Wire:
    """uvicorn's HTTP/1.1 connection (httptools), written to directly: the same chunk
    framing as its own ``send``, and the same back-pressure (its flow control)."""

    __slots__ = ("cycle", "flow", "transport")

    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle
        self.flow = cycle.flow
        self.transport = cycle.transport

    @staticmethod
    def of(scope: Scope) -> _Wire | None:
        """The connection behind this response, once its head is sent with chunked framing;
        None for any other server (every write then goes through ``send``)."""
        cycle = getattr(scope.get(RAW_SEND), "__self__", None)
        if (
            cycle is None
            or getattr(cycle, "chunked_encoding", None) is not True
            or getattr(cycle, "response_complete", True)
            or not hasattr(getattr(cycle, "flow", None), "write_paused")
            or not hasattr(getattr(cycle, "transport", None), "write")
        ):
            return None
        return _Wire(cycle)

    def writable(self) -> bool:
        return not (
            self.flow.write_paused or self.cycle.disconnected or self.transport.is_closing()
        )

    def write(self, chunks: bytes) -> None:
        self.transport.write(chunks)

    def close(self) -> None:
        self.transport.close()


class StreamResponse(EventSourceResponse):
    """The SSE response of ``GET /v1/sse``: one HTTP chunk per message, lean per message.

    sse-starlette's headers and HEAD answer are kept; the stream itself runs in the
    request's task with one helper task that waits for the client to leave. A message goes
    straight to the connection when it is writable (see ``_Wire``), else through ``send``
    under ``send_timeout``: a client that reads nothing for that long has its stream cut
    (its buffers stop growing). While the stream waits, the hub writes live events to the
    connection itself (``Subscriber.deliver``), so a fan-out wakes no task per subscriber.
    """

    subscriber: Subscriber | None = None
    direct = True  # False (``SEENN_SSE_DIRECT_WRITES``): every message through ``send``

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.subscriber
        if sub is None or scope["type"] != "http" or scope["method"].upper() == "HEAD":
            await super().__call__(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        ended = False  # the client left, or the server cut the stream

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                task.cancel()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            end()

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        wire = _Wire.of(scope) if self.direct else None
        sub.wire = wire
        sub.abort = end
        watcher = asyncio.create_task(watch())
        iterator = cast(AsyncIterator[bytes], self.body_iterator)  # events(): bytes
        try:
            async for message in iterator:
                if wire is not None and wire.writable():
                    wire.write(frame(message))
                    continue
                try:
                    async with asyncio.timeout(self.send_timeout):
                        await send(
                            {"type": "http.response.body", "body": message, "more_body": True}
                        )
                except TimeoutError:
                    log.info("SSE client read nothing for %.0f s: stream cut", self.send_timeout)
                    raise SendTimeoutError() from None  # the server closes the connection
        except asyncio.CancelledError:
            if not ended:
                raise
            task.uncancel()
        finally:
            sub.wire = None
            sub.abort = None
            watcher.cancel()
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if wire is not None and not wire.writable():
            wire.close()  # gone, or not reading: no goodbye to wait for
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()
