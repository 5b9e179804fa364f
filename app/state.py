"""The one type of what the lifespan builds (``app.state``), so that every read of it is
typed: ``app_state(request).engine`` rather than an untyped ``request.app.state.engine``."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from starlette.datastructures import State
from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.api.ratelimit import RateLimiter
    from app.background import Background
    from app.dashboard.feed import DashboardFeed
    from app.domain.keys import KeyCache
    from app.domain.tokens import SigningKeys
    from app.domain.unit_of_work import UnitOfWork
    from app.observability import Metrics
    from app.realtime.connections import ConnectionLimiter
    from app.realtime.hub import Hub, PgNotifier
    from app.realtime.runtime import Realtime
    from app.settings import Settings


class AppState(State):
    """``app.state`` of the server (Starlette's ``State``, with its attributes declared).

    ``metrics`` exists from the app's creation; the rest from the lifespan's start.
    """

    metrics: Metrics
    settings: Settings
    draining: bool
    engine: AsyncEngine
    key_cache: KeyCache
    signing_keys: SigningKeys
    realtime: Realtime
    hub: Hub
    notifier: PgNotifier
    dashboard_feed: DashboardFeed
    rate_limiter: RateLimiter | None
    sse_limiter: ConnectionLimiter
    background: Background
    unit_of_work: UnitOfWork


def app_state(conn: HTTPConnection) -> AppState:
    """The state of the app serving ``conn`` (a request or a websocket)."""
    return cast(AppState, conn.app.state)
