"""Operational signals: Prometheus metrics, request ids and structured (JSON) logs.

Every HTTP request gets a request id (a valid incoming ``X-Request-ID``, else a new ULID),
echoed in the response and attached to every log line written while it is handled.
"""

from __future__ import annotations

import logging
import logging.config
import random
import re
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any
from weakref import WeakKeyDictionary

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

REQUEST_ID_HEADER = b"x-request-id"
_CONTENT_TYPE = b"content-type"
_EVENT_STREAM = b"text/event-stream"
# A ULID's 26 Crockford base32 digits, two at a time: 13 groups of 10 bits (130 >= 128).
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_TEN_BIT_SHIFTS = tuple(range(120, -1, -10))
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
request_id_var: ContextVar[str | None] = ContextVar("seenn_request_id", default=None)

UNMATCHED_ROUTE = "unmatched"  # the route label of a request that matched no route
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # probes: access log at DEBUG
_CLIENT_GONE = 499  # nginx's code for "the client closed the connection before an answer"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FANOUT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_EVENT_INSERT = re.compile(r"\bINSERT\s+INTO\s+events\b", re.IGNORECASE)

access_log = logging.getLogger("seenn.access")
log = logging.getLogger(__name__)


def new_request_id() -> str:
    """A new ULID: milliseconds since the epoch and 80 random bits, in Crockford base32.

    A request id is a correlation id, not a secret: the random bits come from ``random``
    (reseeded in each forked worker), several times cheaper than ``ULID()``'s os.urandom.
    """
    value = time.time_ns() // 1_000_000 << 80 | random.getrandbits(80)
    return "".join([_CROCKFORD_PAIRS[value >> shift & 1023] for shift in _TEN_BIT_SHIFTS])


def request_id_from(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if it is 1-128 of ``[A-Za-z0-9._:-]``, else a new id."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _VALID_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


class Metrics:
    """This app's metrics, in a registry of its own (an app built twice never collides)."""

    def __init__(self) -> None:
        # No ``*_created`` series: they would double the scrape for nothing.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "seenn_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            registry=r,
        )
        self.http_duration = Histogram(
            "seenn_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template "
            "(event streams are not observed: their duration is the stream's lifetime).",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sse_connections = Gauge("seenn_sse_connections", "SSE streams open now.", registry=r)
        self.events_written = Counter(
            "seenn_events_written",
            "Job events committed to the event log by this process.",
            registry=r,
        )
        self.events_delivered = Counter(
            "seenn_events_delivered",
            "Job events (backlog and live) sent to SSE clients by this process.",
            registry=r,
        )
        self.notification_lag = Histogram(
            "seenn_notification_lag_seconds",
            "Seconds from an event's write (its transaction's timestamp) until the realtime "
            "hub of this process read it for its subscribers.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.sse_fanout = Histogram(
            "seenn_sse_fanout_seconds",
            "Seconds from one log read's rows to the last direct write of its new events "
            "to this process's waiting SSE streams (the fan-out of one read).",
            buckets=_FANOUT_BUCKETS,
            registry=r,
        )
        self.sse_wake_to_write = Histogram(
            "seenn_sse_wake_to_write_seconds",
            "Seconds from the first wake-up of this process's realtime hub with news (a local "
            "commit or a NOTIFY) to the last direct write of that news to a waiting stream.",
            buckets=_FANOUT_BUCKETS,
            registry=r,
        )
        self.sse_events_queued = Counter(
            "seenn_sse_events_queued",
            "Live events the hub queued for a stream's own task (the stream was busy or its "
            "connection under back-pressure) instead of writing them directly.",
            registry=r,
        )
        self.push_sent = Counter(
            "seenn_push_deliveries_sent",
            "Pushes APNs accepted, by kind (liveactivity, alert, background).",
            ("kind",),
            registry=r,
        )
        self.push_failed = Counter(
            "seenn_push_deliveries_failed",
            "Pushes given up, by kind and APNs reason (or the network error).",
            ("kind", "reason"),
            registry=r,
        )
        self.push_retried = Counter(
            "seenn_push_deliveries_retried",
            "Push attempts that failed and were scheduled again (with backoff), by kind.",
            ("kind",),
            registry=r,
        )
        self.push_skipped = Counter(
            "seenn_push_deliveries_skipped",
            "Pushes skipped because APNs is not configured.",
            registry=r,
        )
        self.push_tokens_deleted = Counter(
            "seenn_push_tokens_deleted",
            "Device and Live Activity tokens deleted because APNs called them invalid.",
            registry=r,
        )
        self.push_outbox_depth = Gauge(
            "seenn_push_outbox_depth",
            "Pushes queued or being sent (all replicas), as last read by this one's worker.",
            registry=r,
        )
        self.db_pool_in_use = Gauge(
            "seenn_db_pool_connections_in_use",
            "Pooled database connections checked out now.",
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def watch_engine(self, engine: AsyncEngine) -> None:
        """Read the pool's checked-out count at scrape time and count committed events.

        Events appended by the job service's write statement (run on the driver) are
        counted by the write itself once committed (``app/api/deps.py``); this hook counts
        any appended through SQLAlchemy's execute path."""
        self.db_pool_in_use.set_function(lambda: float(_checked_out(engine)))
        _count_committed_event_rows(engine, self.events_written)


def _checked_out(engine: AsyncEngine) -> int:
    checkedout = getattr(engine.pool, "checkedout", None)  # a QueuePool; NullPool has none
    return int(checkedout()) if checkedout is not None else 0


def _count_committed_event_rows(engine: AsyncEngine, counter: Counter) -> None:
    """Count rows inserted into ``events``, when (and only if) their transaction commits.

    Hooked on the engine so that whichever code appends events, the count stays exact and
    rolled-back writes (deadlock retries, outages) are not counted. The pending counts are
    kept per ``Connection`` object, never in ``Connection.info``: reading that on a
    connection that died mid-transaction raises, and a metric must never fail a request.
    """
    sync_engine = engine.sync_engine
    pending: WeakKeyDictionary[Any, int] = WeakKeyDictionary()

    def after_cursor_execute(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        rows = cursor.rowcount
        if rows > 0 and _EVENT_INSERT.search(statement):
            pending[conn] = pending.get(conn, 0) + rows

    def commit(conn: Any) -> None:
        written = pending.pop(conn, 0)
        if written:
            counter.inc(written)

    def forget(conn: Any) -> None:
        pending.pop(conn, None)

    event.listen(sync_engine, "begin", forget)
    event.listen(sync_engine, "after_cursor_execute", after_cursor_execute)
    event.listen(sync_engine, "commit", commit)
    event.listen(sync_engine, "rollback", forget)


class RouteTemplates:
    """Maps a matched route to its full path template, e.g. ``/v1/jobs/{job_id}``.

    FastAPI may hand the router's own route object to the request (whose ``path`` lacks the
    include prefix), so the full templates are read once from the app's route contexts.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._paths: dict[int, str] | None = None

    def of(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return UNMATCHED_ROUTE
        if self._paths is None:
            self._paths = _full_paths(self.app.routes)
        path = self._paths.get(id(route)) or getattr(route, "path_format", None)
        return path if isinstance(path, str) else UNMATCHED_ROUTE


def _full_paths(routes: Iterable[Any]) -> dict[int, str]:
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies included routes: their own path is complete
        return {}
    paths: dict[int, str] = {}
    for context in iter_route_contexts(list(routes)):
        if context.path_format:
            paths.setdefault(id(context.original_route), context.path_format)
    return paths


class ObservabilityMiddleware:
    """Request id, access log line and request metrics for every HTTP request (pure ASGI, so
    streaming responses pass through untouched). Installed outside Starlette's error
    middleware, so a 500 is counted, logged and carries the request id too."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: RouteTemplates) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        # Label children by (method, route, status): ``labels()`` builds and locks per call.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status: int | None = None
        streaming = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = []
                for header in message.get("headers", ()):
                    name = header[0]
                    if name == REQUEST_ID_HEADER:
                        continue
                    if name == _CONTENT_TYPE and header[1].startswith(_EVENT_STREAM):
                        streaming = True
                    headers.append(header)
                headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
                message["headers"] = headers
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            failed = True
            raise
        finally:
            if status is None:
                status = 500 if failed else _CLIENT_GONE
            try:
                self._record(scope, request_id, status, time.perf_counter() - started, streaming)
            except Exception:  # observing a request must never be what fails it
                log.exception("could not record the request's metrics or access log")
            request_id_var.reset(token)

    def _record(
        self, scope: Scope, request_id: str, status: int, seconds: float, streaming: bool
    ) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        route = self.routes.of(scope)
        counted = self._counted.get((method, route, status))
        if counted is None:
            counted = self.metrics.http_requests.labels(method, route, str(status))
            self._counted[(method, route, status)] = counted
        counted.inc()
        if not streaming:
            timed = self._timed.get((method, route))
            if timed is None:
                timed = self._timed[(method, route)] = self.metrics.http_duration.labels(
                    method, route
                )
            timed.observe(seconds)
        level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO
        if not access_log.isEnabledFor(level):
            return  # the record would be dropped: do not build it
        client = scope.get("client")
        # The path as sent (still percent-encoded, no query string): no secrets from the
        # query (SSE may carry an API key there) and no control characters in the log.
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")[:512]
        access_log.log(
            level,
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "request_id": request_id,
                "method": method,
                "route": route,
                "path": path,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "client": client[0] if client else None,
            },
        )


# --- logging ------------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to every record written while handling it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = request_id_var.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class CutStreamFilter(logging.Filter):
    """Drops the server's "Exception in ASGI application" for an SSE stream cut because
    its client stopped reading: the stream logs that itself, as an ordinary event."""

    def filter(self, record: logging.LogRecord) -> bool:
        from sse_starlette.sse import SendTimeoutError

        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SendTimeoutError)


class MigrationSetupFilter(logging.Filter):
    """Drops Alembic's two set-up lines on every start ("Context impl PostgresqlImpl.",
    "Will assume transactional DDL."); the migrations it applies are still logged."""

    _SETUP = ("Context impl ", "Will assume ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._SETUP)


def _utc_time(record: logging.LogRecord) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{base}.{int(record.msecs):03d}Z"


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line: ts, level, logger, msg, then any extra fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "ts",
                "levelname": "level",
                "name": "logger",
                "message": "msg",
            },
            reserved_attrs=[*RESERVED_ATTRS, "color_message", "taskName"],
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_time(record)


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s",
            defaults={"request_id": "-"},
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_time(record)


_LEVELS = {"trace": 5}  # uvicorn's extra level, below DEBUG


def logging_config(settings: Settings) -> dict[str, Any]:
    """A ``dictConfig`` for the whole process, uvicorn's own loggers included."""
    name = settings.log_level.lower()
    level: int | str = _LEVELS.get(name, name.upper())
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter},
            "cut_stream": {"()": CutStreamFilter},
            "migration_setup": {"()": MigrationSetupFilter},
        },
        "formatters": {"default": {"()": JsonFormatter if settings.log_json else TextFormatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "loggers": {
            # uvicorn's loggers write through the root handler, in the same format.
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {
                "handlers": [],
                "propagate": True,
                "level": level,
                "filters": ["cut_stream"],
            },
            # Our access log replaces uvicorn's (it has the route and the request id).
            "uvicorn.access": {"handlers": [], "propagate": False},
            "alembic.runtime.migration": {
                "handlers": [],
                "propagate": True,
                "filters": ["migration_setup"],
            },
        },
        "root": {"handlers": ["default"], "level": level},
    }


def configure_logging(settings: Settings) -> None:
    """Send every log record (and Python warnings) to stderr in the configured format."""
    logging.addLevelName(_LEVELS["trace"], "TRACE")
    logging.config.dictConfig(logging_config(settings))
    logging.captureWarnings(True)
