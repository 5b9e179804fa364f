"""The application factory, its lifespan, and the HTTP server that drains it on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.api import children, devices, eta, health, idempotency, jobs, sse, tokens, transitions
from app.api.errors import install_error_handlers
from app.api.guards import RequestGuards
from app.api.ratelimit import limiter_from_settings
from app.api.schemas import install_openapi, install_swagger_ui
from app.background import start_background
from app.dashboard import routes as dashboard
from app.dashboard.feed import DashboardFeed
from app.db.engine import create_engine
from app.domain.keys import KeyCache
from app.domain.tokens import SigningKeys
from app.domain.unit_of_work import AfterCommit, UnitOfWork
from app.observability import Metrics, ObservabilityMiddleware, RouteTemplates
from app.realtime.connections import ConnectionLimiter
from app.realtime.runtime import end_streams, start_realtime, stop_realtime
from app.settings import Settings, get_settings
from app.state import AppState

log = logging.getLogger("seenn.server")
# What a browser client may send, and read back, across origins.
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-Request-ID",
]
CORS_RESPONSE_HEADERS = [
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-Request-ID",
    "Idempotent-Replayed",
]


# FastAPI's own OpenTelemetry instrumentation, off: this server's signals are its Prometheus
# metrics and JSON logs, and the check for a configured provider costs every request.
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


class SeennApp(FastAPI):
    """FastAPI with the request-id, access-log and metrics middleware outermost: outside
    Starlette's error middleware, so that even a 500 is counted and carries its id."""

    state: AppState

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_NO_TELEMETRY, **kwargs)
        self.state = AppState()

    def build_middleware_stack(self) -> ASGIApp:
        return ObservabilityMiddleware(
            super().build_middleware_stack(), self.state.metrics, RouteTemplates(self)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The server's own send, for the SSE stream's direct writes (app/api/sse.py).
        scope[sse.RAW_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, database_url: str | None = None) -> SeennApp:
    """Build the app. ``database_url`` overrides the settings' URL (embedded server)."""
    settings = settings or get_settings()
    url = database_url or settings.database_url
    if url is None:
        raise RuntimeError("no database URL: set SEENN_DATABASE_URL or use `seenn-server serve`")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = cast(AppState, app.state)
        state.settings = settings
        state.draining = False
        state.engine = engine = create_engine(url, settings)
        state.metrics.watch_engine(engine)
        state.key_cache = KeyCache(settings.auth_cache_seconds)
        state.signing_keys = SigningKeys(
            engine, settings.auth_cache_seconds, settings.token_lifetime_seconds
        )
        state.realtime = realtime = start_realtime(engine, url, settings, state.metrics)
        state.hub = realtime.hub
        state.notifier = realtime.notifier
        state.dashboard_feed = DashboardFeed(
            realtime.hub, settings.sse_poll_interval_seconds, settings.sse_client_buffer
        )
        state.rate_limiter = limiter_from_settings(settings)
        state.sse_limiter = ConnectionLimiter(
            settings.sse_max_connections_per_key, settings.sse_max_connections_per_user
        )
        compaction_engine = create_engine(url, settings, pool_size=1)
        state.background = start_background(
            engine, settings, state.metrics, compaction_engine=compaction_engine
        )
        state.unit_of_work = UnitOfWork(
            engine,
            AfterCommit(
                state.metrics.events_written, realtime.notifier, state.background.eta_compactor
            ),
        )
        # Everything built at startup lives as long as the process: move it out of the
        # collector's sight, so collections under load walk only per-request objects.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await state.background.stop()
            await state.dashboard_feed.close()
            await stop_realtime(realtime)
            await compaction_engine.dispose()
            await engine.dispose()

    app = SeennApp(
        title="seenn-server",
        version=__version__,
        description="Self-hosted, Seenn-compatible job progress API.",
        lifespan=lifespan,
        docs_url=None,  # served from vendored assets: install_swagger_ui
        redoc_url=None,  # ReDoc would load its script from a CDN
    )
    app.state.metrics = Metrics()
    install_error_handlers(app)
    idempotency.install(app)
    install_openapi(app)
    install_swagger_ui(app)
    # Each API module straight under the app: FastAPI matches a request once per level of
    # included routers (and again to handle it), so one level is half the routing work.
    for module in (jobs, children, transitions, eta, devices, sse, tokens):
        app.include_router(module.router, prefix="/v1")
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.mount("/dashboard/static", dashboard.static_files(), name="dashboard-static")
    app.add_middleware(RequestGuards, max_bytes=settings.max_body_bytes)
    origins = [o.strip() for o in settings.cors_allow_origins.split(",") if o.strip()]
    if origins:  # outermost of these, so a preflight is answered before anything else
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
            max_age=600,
        )
    return app


# --- serving ------------------------------------------------------------------------------


class DrainingServer(uvicorn.Server):
    """uvicorn that drains before it stops: /readyz fails at once, SSE clients get
    ``connection.idle`` after ``shutdown_delay_seconds``, then uvicorn stops accepting and
    waits up to ``graceful_shutdown_seconds`` for the requests in flight."""

    def __init__(self, config: uvicorn.Config, app: SeennApp, delay: float) -> None:
        super().__init__(config)
        self.app = app
        self.delay = delay

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.app.state.draining = True
        log.info("draining: readiness fails now, streams close in %.1f s", self.delay)
        await asyncio.sleep(self.delay)  # still serving, so load balancers see /readyz fail
        if hasattr(self.app.state, "realtime"):
            end_streams(self.app.state.realtime)
        # sse-starlette then cancels any stream still open after its grace period.
        AppStatus.should_exit = True
        await super().shutdown(sockets)


def serve(settings: Settings, database_url: str, host: str, port: int, workers: int = 1) -> int:
    """Run the HTTP server until SIGTERM or SIGINT, drain, and return its exit status.

    With ``workers`` > 1 the port is bound here and that many forked processes serve it
    (the kernel spreads connections over them); SIGTERM/SIGINT are passed on to each, and
    each drains as a single server does. Configure logging first
    (``app.observability.configure_logging``): uvicorn's loggers are left to that
    configuration.
    """
    if workers <= 1:
        _serve_one(settings, database_url, host, port, None)
        return 0
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    children = [_fork_worker(settings, database_url, host, port, sock) for _ in range(workers)]
    sock.close()
    log.info("serving on %s:%d with %d worker processes %s", host, port, workers, children)

    def forward(sig: int, _frame: object) -> None:
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for pid in children:
            _, wait_status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(wait_status) != 0:
                status = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("all workers stopped")
    return status


def _fork_worker(
    settings: Settings, database_url: str, host: str, port: int, sock: socket.socket
) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        _serve_one(settings, database_url, host, port, sock)
    except BaseException:
        log.exception("worker failed")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)  # never run the parent's exit handlers (an embedded database's stop)


def _serve_one(
    settings: Settings, database_url: str, host: str, port: int, sock: socket.socket | None
) -> None:
    app = create_app(settings, database_url)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=settings.log_level,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        timeout_keep_alive=settings.keep_alive_seconds,
        access_log=False,  # ours has the route and the request id
    )
    # Streams must go on during the shutdown delay: the server ends them itself.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    with _signals_end_cleanly():
        DrainingServer(config, app, settings.shutdown_delay_seconds).run(
            sockets=[sock] if sock is not None else None
        )
    log.info("server stopped")


@contextmanager
def _signals_end_cleanly() -> Iterator[None]:
    """uvicorn re-raises the stop signal after its graceful shutdown, which would end the
    process by that signal; a no-op handler makes it a normal return (exit status 0)."""
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda _sig, _frame: None) for sig in stop_signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
