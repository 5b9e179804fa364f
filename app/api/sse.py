"""GET /v1/sse: a user's job events as Server-Sent Events, resumable by event id."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from app.api.deps import bearer_key, owner_of, principal_for_key, require_user
from app.api.sse_limits import acquire_sse_slot
from app.db import eventlog
from app.domain.clock import now_ms
from app.domain.commands import ULID_RE, USER_ID_MAX, is_identifier
from app.domain.errors import JobNotFound, NotFound, ValidationFailed
from app.domain.keys import Principal
from app.observability import Metrics
from app.realtime.hub import Hub, Subscriber
from app.realtime.stream import Delivery, StreamPlan

log = logging.getLogger("seenn.realtime")
router = APIRouter(tags=["realtime"])
_SEQ_RE = re.compile(r"^\d{1,18}$")


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
    state = request.app.state
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
            stream = await eventlog.stream_for(conn, owner, user_id)
            resume = last_id is not None and last_id <= stream.last_seq
            # Seqs are dense per stream, so the count to replay is known without a query;
            # a client too far behind is brought up to date by job.sync, not a huge replay.
            if resume and last_id is not None:
                resume = stream.last_seq - last_id <= settings.sse_max_replay_events
            if resume and last_id is not None and last_id < stream.last_seq:
                oldest = await eventlog.oldest_seq(conn, stream.stream_id)
                resume = oldest is not None and oldest <= last_id + 1
            start = last_id if resume and last_id is not None else stream.last_seq
            # Subscribe before reading anything: the stream reads the log up to the hub's
            # position, and the hub offers everything after it.
            deadline = time.monotonic() + settings.sse_max_connection_seconds
            expiry = _token_deadline(principal, settings.sse_token_expiry_margin_seconds)
            token_expires_first = expiry is not None and expiry < deadline
            if expiry is not None and token_expires_first:
                deadline = expiry
            sub = Subscriber(
                stream.stream_id,
                start,
                job_id,
                settings.sse_client_buffer,
                deadline,
                (owner.app_id, owner.mode, user_id),
                settings.sse_client_buffer_bytes,
            )
            if token_expires_first:
                sub.expiry_reason = "token_expired"  # reconnect with a new token
            hub.add(sub, stream.last_seq)
            slot.on_replaced(sub.close)
            if hub.shutdown_event.is_set():  # draining already: say goodbye at once
                sub.stop()
            sync: list[str] = []
            if not resume:
                now = now_ms()
                since = now - timedelta(hours=settings.sync_finished_window_hours)
                sync = await eventlog.sync_ids(
                    conn, owner, user_id, job_id, now, since, settings.sse_sync_limit
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

    return StreamResponse(
        events(),
        background=BackgroundTask(cleanup),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        ping=0,  # the hub's ticker sends heartbeats: no timer task per connection
        shutdown_event=hub.shutdown_event,
        shutdown_grace_period=2.0,
        send_timeout=settings.sse_send_timeout_seconds,
    )


class StreamResponse(EventSourceResponse):
    """An SSE response whose sends time out: a client that reads nothing for
    ``send_timeout`` seconds has its stream cut (its buffers stop growing)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.info("SSE client read nothing for %.0f s: stream cut", self.send_timeout)
            raise  # the server closes the connection (its log line is filtered out)
