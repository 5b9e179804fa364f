"""Engine construction: one async engine (asyncpg) per process."""

from __future__ import annotations

import orjson
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db.failures import means_dead_connection
from app.settings import Settings

# How long a new connection may take before the database counts as unreachable. Short: a
# stalled server (network partition, frozen host) accepts TCP but never answers, and
# requests must turn into 503s, not hang.
CONNECT_TIMEOUT_SECONDS = 5.0
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


def _invalidate_dead(context: ExceptionContext) -> None:
    """Treat timeouts and lost sessions as disconnects.

    SQLAlchemy then discards the connection and every pooled connection older than it, so
    the next checkout connects afresh: recovery after a database restart or stall costs one
    failed request per in-flight connection, and no per-checkout ping.
    """
    if not context.is_disconnect and means_dead_connection(context.original_exception):
        context.is_disconnect = True


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def create_engine(url: str, settings: Settings, pool_size: int | None = None) -> AsyncEngine:
    """The application's engine: a bounded pool whose waiters time out, no pre-ping
    (``pool_size`` overrides the setting, for a background task's own small pool).

    A dead pooled connection is found by the request that uses it (an error that
    invalidates the pool, answered 503, reads retried once); pinging on every checkout
    cost three round trips per request.
    """
    server_settings = {"application_name": "seenn-server"}
    prepared: dict[str, object] = {"prepared_statement_cache_size": 256}
    if not settings.db_prepared_statements:
        # Behind a transaction-mode pooler, consecutive statements of one session may run
        # on different server connections: use only the unnamed statement, which asyncpg
        # parses and executes in one exchange.
        prepared = {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: "",
        }
    if settings.db_statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
    engine = create_async_engine(
        async_url(url),
        pool_size=settings.db_pool_size if pool_size is None else pool_size,
        max_overflow=settings.db_max_overflow if pool_size is None else 0,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=False,
        pool_recycle=1800,
        # JSON(B) columns through orjson: the ETA digest is read on every progress write.
        # Request bodies are validated with orjson, so everything stored round-trips.
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        connect_args={
            "server_settings": server_settings,
            "timeout": CONNECT_TIMEOUT_SECONDS,
            "command_timeout": command_timeout(settings),
            **prepared,
        },
    )
    event.listen(engine.sync_engine, "handle_error", _invalidate_dead)
    return engine
