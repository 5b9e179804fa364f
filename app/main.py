"""The application factory and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from app import __version__
from app.api import children, eta, health, idempotency, jobs, sse, transitions
from app.api.deps import KeyCache
from app.api.docs import install_openapi
from app.api.errors import install_error_handlers
from app.api.guards import StrictUrlMiddleware
from app.api.limits import ConnectionLimiter
from app.api.ratelimit import RateLimitHeadersMiddleware, limiter_from_settings
from app.api.routing import BodyLimitMiddleware, OrjsonRoute
from app.db.engine import create_engine
from app.maintenance import start_sweeper, stop_sweeper
from app.realtime.runtime import start_realtime, stop_realtime
from app.settings import Settings, get_settings


def create_app(settings: Settings | None = None, database_url: str | None = None) -> FastAPI:
    """Build the app. ``database_url`` overrides the settings' URL (embedded server)."""
    settings = settings or get_settings()
    url = database_url or settings.database_url
    if url is None:
        raise RuntimeError("no database URL: set SEENN_DATABASE_URL or use `seenn-server serve`")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.engine = create_engine(url, settings)
        app.state.key_cache = KeyCache(settings.auth_cache_seconds)
        realtime = start_realtime(app.state.engine, url, settings)
        app.state.hub = realtime.hub
        app.state.notifier = realtime.notifier
        app.state.rate_limiter = limiter_from_settings(settings)
        app.state.sse_limiter = ConnectionLimiter(settings.sse_max_connections_per_key)
        sweeper = start_sweeper(app.state.engine, settings)
        try:
            yield
        finally:
            await stop_sweeper(sweeper)
            await stop_realtime(realtime)
            await app.state.engine.dispose()

    app = FastAPI(
        title="seenn-server",
        version=__version__,
        description="Self-hosted, Seenn-compatible job progress API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    idempotency.install(app)
    install_openapi(app)
    api = APIRouter(prefix="/v1", route_class=OrjsonRoute)
    for module in (jobs, children, transitions, eta, sse):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(StrictUrlMiddleware)
    app.add_middleware(RateLimitHeadersMiddleware)
    return app
