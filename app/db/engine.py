"""Engine construction: one async engine (asyncpg) per process."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from app.settings import Settings

# How long a new connection may take, and a pre-ping of a pooled one, before the database
# counts as unreachable. Short: a stalled server (network partition, frozen host) accepts
# TCP but never answers, and requests must turn into 503s, not hang.
CONNECT_TIMEOUT_SECONDS = 5.0
PING_TIMEOUT_SECONDS = 2.0
# Client-side bound on any one command when the server enforces none (statement_timeout=0).
FALLBACK_COMMAND_TIMEOUT_SECONDS = 30.0
# The client waits this much longer than statement_timeout, so that normally the server
# cancels first (a clean error on a usable connection) and the client bound only fires
# when the server is stalled.
_GRACE_SECONDS = 2.0


def async_url(url: str) -> str:
    """Return ``url`` with the asyncpg driver, whatever driver it named."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def plain_url(url: str) -> str:
    """Return ``url`` as a libpq/asyncpg URL (no SQLAlchemy driver suffix)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def command_timeout(settings: Settings) -> float:
    """The client-side bound on one database command, in seconds."""
    if settings.db_statement_timeout_ms:
        return settings.db_statement_timeout_ms / 1000 + _GRACE_SECONDS
    return FALLBACK_COMMAND_TIMEOUT_SECONDS


def _bounded_ping(dbapi_connection: Any) -> bool:
    """The asyncpg dialect's pre-ping, bounded by ``PING_TIMEOUT_SECONDS``.

    A ping that times out raises ``TimeoutError``: the pool discards the connection and the
    request is answered 503 at once instead of waiting for the command timeout.
    """
    ping = getattr(dbapi_connection, "_async_ping", None)
    if ping is None:  # an adapter without the coroutine: its own, unbounded ping
        dbapi_connection.ping()
        return True
    try:
        await_(asyncio.wait_for(ping(), PING_TIMEOUT_SECONDS))
    except Exception as error:
        dbapi_connection._handle_exception(error)
    return True


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    """The application's engine: a bounded pool whose waiters time out."""
    server_settings = {"application_name": "seenn-server"}
    if settings.db_statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
    engine = create_async_engine(
        async_url(url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "server_settings": server_settings,
            "timeout": CONNECT_TIMEOUT_SECONDS,
            "command_timeout": command_timeout(settings),
        },
    )
    engine.dialect.do_ping = _bounded_ping  # type: ignore[method-assign]
    return engine
