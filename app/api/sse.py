"""GET /v1/sse: a user's job events as Server-Sent Events, resumable by event id."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from app.api.deps import bearer_key, owner_of, principal_for_key, require_user
from app.api.limits import acquire_sse_slot
from app.domain.commands import ULID_RE
from app.domain.errors import JobNotFound, NotFound, ValidationFailed
from app.domain.keys import Principal
from app.domain.views import event_view, now_ms
from app.observability import Metrics
from app.realtime import eventlog
from app.realtime.hub import Hub, Subscriber, encode

router = APIRouter(tags=["realtime"])
_USER_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")
_SEQ_RE = re.compile(r"^\d{1,18}$")
_BATCH = 64  # messages joined into one write when a client is behind


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
    if not _SEQ_RE.match(raw.strip()):
        raise ValidationFailed(
            "lastEventId must be a non-negative integer event id",
            {"field": "lastEventId", "value": raw[:100]},
        )
    return int(raw.strip())


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


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
    if not user_id or not _USER_RE.match(user_id):
        raise ValidationFailed("userId is required (1-255 characters)", {"field": "userId"})
    job_id = request.query_params.get("jobId") or None
    if job_id is not None and not ULID_RE.match(job_id):
        raise ValidationFailed("jobId must be a job id (ULID)", {"field": "jobId"})
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
        # All database work happens here; the connection is back in the pool before
        # the stream starts.
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
            # Subscribe before reading the backlog; the seq filter removes the overlap.
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
            )
            hub.add(sub)
            if hub.shutdown_event.is_set():  # draining already: say goodbye at once
                sub.stop()
            backlog = await eventlog.backlog(conn, stream.stream_id, start)
            syncs = (
                []
                if resume
                else await eventlog.unfinished_jobs(
                    conn, owner, user_id, job_id, now_ms(), settings.sse_sync_limit
                )
            )
            await conn.rollback()
    except BaseException:
        if sub is not None:
            hub.remove(sub)
        slot.release()
        raise

    hello = {"userId": user_id} if job_id is None else {"userId": user_id, "jobId": job_id}
    first = [encode(start, "connected", _json(hello))]  # absent, never null
    first += [encode(None, "job.sync", _json(event_view(row))) for row in syncs]
    sent = start
    replayed = 0
    for row in backlog:
        if sub.wants(row["seq"], row["job_id"], row["parent_id"]):
            first.append(encode(row["seq"], row["event"], row["payload"]))
            replayed += 1
        sent = row["seq"]

    async def events() -> AsyncIterator[bytes]:
        nonlocal sent
        last_sent = time.monotonic()
        metrics.sse_connections.inc()
        try:
            metrics.events_delivered.inc(replayed)
            yield b"".join(first)
            first.clear()  # an idle stream keeps nothing it has sent
            while True:
                item = await sub.get()
                chunks: list[bytes] = []
                events = 0
                stop: str | None = None
                while True:
                    seq, data = item
                    if seq == Subscriber.BEAT:
                        chunks.append(data)
                    elif seq < 0:
                        stop = Subscriber.STOP_REASONS[seq]
                        break
                    elif seq > sent:  # dedupe at the backlog/live seam
                        chunks.append(data)
                        events += 1
                        sent = seq
                    if len(chunks) >= _BATCH or sub.empty():
                        break
                    item = sub.get_nowait()
                if events:
                    last_sent = time.monotonic()
                    metrics.events_delivered.inc(events)
                if chunks:
                    yield b"".join(chunks)
                if stop == "overflow":
                    return  # the client resumes from its last id
                if stop is not None:
                    reason = stop
                    if stop == "maxLifetime" and token_expires_first:
                        reason = "token_expired"  # reconnect with a new token
                    break
            idle_ms = int((time.monotonic() - last_sent) * 1000)
            yield encode(None, "connection.idle", _json({"reason": reason, "idleTime": idle_ms}))
        finally:
            metrics.sse_connections.dec()
            hub.remove(sub)
            slot.release()

    def cleanup() -> None:  # also runs when the generator never started
        hub.remove(sub)
        slot.release()

    return EventSourceResponse(
        events(),
        background=BackgroundTask(cleanup),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        ping=0,  # the hub's ticker sends heartbeats: no timer task per connection
        shutdown_event=hub.shutdown_event,
        shutdown_grace_period=2.0,
    )
