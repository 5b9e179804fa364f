"""Every rule about database failures: what a failed call means for the request, the
connection and a retry. The one place that reads SQLSTATEs."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# SQLSTATEs after which the session is gone: connection exceptions, admin/crash shutdown.
_DEAD_STATES = ("08", "57P01", "57P02", "57P03")
_DEAD_TYPES = (
    TimeoutError,
    OSError,
    asyncpg.exceptions.InterfaceError,  # "connection is closed", "operation in progress"
    asyncpg.exceptions.ConnectionDoesNotExistError,
    # The protocol out of step with the server: a session's termination notice read while
    # it was idle in the pool, before its socket's close ("another operation is in progress").
    asyncpg.exceptions.InternalClientError,
)
_RETRYABLE_STATES = ("40P01", "40001")  # deadlock detected, serialization failure
# SQLSTATE classes that mean "the database is not available right now": connection
# failures, resource limits, shutdown, statement timeout, a read-only server (a failover
# in progress), and transient conflicts that outlived the write's retries (deadlock,
# serialization failure, lock timeout).
_UNAVAILABLE_STATES = ("08", "53", "57P", "57014", "25006", "40001", "40P01", "55P03")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE behind a (wrapped) database error, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        state = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(state, str):
            return state
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable, overloaded or shutting down."""
    if isinstance(exc, PoolTimeout | OSError | ConnectionError | TimeoutError):
        return True
    state = sqlstate(exc)
    if state is not None:
        return state.startswith(_UNAVAILABLE_STATES)
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def means_dead_connection(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) shows the connection itself is unusable."""
    seen = exc
    while seen is not None:
        if isinstance(seen, _DEAD_TYPES):
            return True
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_DEAD_STATES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def stale_connection(exc: DBAPIError) -> bool:
    """A pooled connection found dead (invalidated), not a stalled server (a timeout)."""
    if not exc.connection_invalidated:
        return False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


def is_retryable(exc: BaseException) -> bool:
    """A transient conflict (deadlock, serialization failure): the transaction may be rerun."""
    return sqlstate(exc) in _RETRYABLE_STATES
