"""The hot statements' short path: asyncpg itself, on the pooled SQLAlchemy connection.

A statement is still written once, with SQLAlchemy, in ``app/db``. It is compiled once per
dialect (SQL with ``$n`` placeholders, the parameter order and each parameter's bind
processor: JSONB through the engine's orjson serialiser, exactly as SQLAlchemy would send
it), and then runs on the connection's own asyncpg connection: no per-execution compile
cache lookup, cursor, result object or greenlet hop. The connection, its transaction, its
pool and its JSON codecs are SQLAlchemy's; rows come back as plain dicts with the same keys
and values as ``result.mappings()``.

A read, or a write that is one statement committed on its own, takes its pooled connection
through :class:`Lease`: out of the engine's own pool, without SQLAlchemy's ``Connection``
and its greenlet hops when an idle connection is ready (see :meth:`Lease.__aenter__`).

Errors keep SQLAlchemy's shape for the callers (``DBAPIError`` with ``.orig``): a
connection found dead is invalidated, so the pool discards it instead of lending it again,
and the error says ``connection_invalidated``, as SQLAlchemy's own path does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util.concurrency import greenlet_spawn

from app.db.failures import means_dead_connection

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Compiled:
    """One statement as asyncpg takes it."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, process in zip(self.names, self.processors, strict=True):
            value = params[name]
            out.append(process(value) if process is not None else value)
        return out


# Statement objects are module constants (or cached per write shape), so they stay alive:
# keyed by identity, kept with their compiled form.
_COMPILED: dict[tuple[int, int], tuple[ClauseElement, Compiled]] = {}


def compiled(stmt: ClauseElement, dialect: Dialect) -> Compiled:
    key = (id(stmt), id(dialect))
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is stmt:
        return hit[1]
    result = cast(SQLCompiler, stmt.compile(dialect=dialect))
    names = tuple(result.positiontup or ())
    processors = tuple(result.binds[name].type._cached_bind_processor(dialect) for name in names)
    entry = Compiled(result.string, names, processors)
    _COMPILED[key] = (stmt, entry)
    return entry


# A pooled connection this close to its recycle age is taken through SQLAlchemy's own path,
# which reconnects it (the short path never needs to wait or connect).
_RECYCLE_MARGIN_SECONDS = 5.0


class Lease:
    """One pooled connection of ``engine``, for statements that each commit on their own
    (no ``BEGIN``; what SQLAlchemy calls autocommit), as ``async with Lease(engine)``.

    When the pool has an idle connection that SQLAlchemy would lend as it is (not due for
    recycling, not invalidated, no pre-ping), it is checked out and returned with the
    pool's own synchronous calls: the same accounting, reset-on-return and events, without
    an ``AsyncConnection``, a ``Connection`` or a greenlet per step. Anything else (waiting
    for a connection, connecting, reconnecting, a connection invalidated or left in a
    transaction) goes through ``engine.connect()`` and SQLAlchemy's greenlet, exactly as
    before, so timeouts, outages and bursts behave as they did. :attr:`conn` is the
    connection as SQLAlchemy's ``AsyncConnection`` (in autocommit), made on first use.
    """

    __slots__ = ("_engine", "_fairy", "_conn", "dialect", "driver_connection")

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._fairy: Any = None
        self._conn: AsyncConnection | None = None
        self.dialect: Dialect = engine.dialect
        self.driver_connection: Any = None

    async def __aenter__(self) -> Lease:
        pool = self._engine.sync_engine.pool
        if _lends_without_waiting(pool):
            self._fairy = pool.connect()
        else:
            conn = await self._engine.connect()
            try:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                self._fairy = await conn.get_raw_connection()
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        self.driver_connection = self._fairy.driver_connection
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fairy, conn = self._fairy, self._conn
        self._fairy = self._conn = self.driver_connection = None
        if conn is not None:
            await conn.close()
        elif fairy is None:  # invalidated: already back in the pool, without its connection
            return
        elif _returns_without_waiting(fairy):
            fairy.close()
        else:
            await greenlet_spawn(fairy.close)

    @property
    def direct(self) -> bool:
        """Whether the connection was lent without SQLAlchemy's ``AsyncConnection``."""
        return self._fairy is not None and self._conn is None

    @property
    def conn(self) -> AsyncConnection:
        """The leased connection as SQLAlchemy's ``AsyncConnection`` (autocommit)."""
        if self._conn is None:
            if self._fairy is None:
                raise RuntimeError("the lease is not open")
            sync = Connection(self._engine.sync_engine, connection=self._fairy)
            # Nothing to await: the fairy has no transaction, so switching it to
            # autocommit sends nothing.
            sync.execution_options(isolation_level="AUTOCOMMIT")
            self._conn = AsyncConnection(self._engine, sync)
        return self._conn

    async def invalidate(self, exc: BaseException) -> None:
        """Discard the connection (found dead): the pool will not lend it again."""
        if self._conn is not None:
            await self._conn.invalidate(exc)
        elif self._fairy is not None:
            fairy, self._fairy = self._fairy, None
            await greenlet_spawn(fairy.invalidate, exc)  # which also checks it in
        self.driver_connection = None


def _lends_without_waiting(pool: Any) -> bool:
    """Whether ``pool.connect()`` would hand out an idle connection as it is: the next one
    in the queue is connected, not due for recycling and not invalidated, and no checkout
    step needs the database (``_ConnectionRecord.get_connection`` and
    ``_ConnectionFairy._checkout``'s conditions)."""
    if type(pool) is not AsyncAdaptedQueuePool or pool._pre_ping:
        return False
    if -1 < pool._max_overflow <= pool._overflow:
        # The pool would ask its queue to wait, which before SQLAlchemy 2.1 awaits even
        # when a connection is idle: only possible inside SQLAlchemy's greenlet.
        return False
    queue: Any = pool._pool._queue  # type: ignore[attr-defined]  # AsyncAdaptedQueue
    if type(queue) is not asyncio.Queue:
        return False
    idle: Any = queue._queue  # type: ignore[attr-defined]  # asyncio.Queue's deque
    if not idle:
        return False
    record = idle[0]  # FIFO: the one get_nowait() takes
    started = record.starttime
    return bool(
        record.dbapi_connection is not None
        and (pool._recycle < 0 or time.time() - started < pool._recycle - _RECYCLE_MARGIN_SECONDS)
        and pool._invalidate_time <= started
        and record._soft_invalidate_time <= started
    )


def _returns_without_waiting(fairy: Any) -> bool:
    """Whether checking ``fairy`` in sends nothing: a live connection with no transaction
    (the reset's rollback is a no-op) going back to a queue with room for it."""
    adapted = fairy.dbapi_connection
    if adapted is None or adapted._transaction is not None or fairy._counter != 1:
        return False
    queue = fairy._pool._pool
    return bool(queue.maxsize <= 0 or queue.qsize() < queue.maxsize)


class Driver:
    """The asyncpg connection under one pooled connection: a :class:`Lease` (each statement
    commits on its own) or an ``AsyncConnection`` (inside its transaction)."""

    def __init__(self, conn: AsyncConnection | Lease) -> None:
        self.conn = conn
        self._raw: Any = None

    async def _connection(self) -> Any:
        if self._raw is None:
            if isinstance(self.conn, Lease):
                if self.conn.driver_connection is None:  # closed, or found dead before
                    gone = ConnectionError("the leased connection is gone")
                    raise OperationalError("", None, gone, connection_invalidated=True)
                self._raw = self.conn.driver_connection
                return self._raw
            fairy = await self.conn.get_raw_connection()
            adapted: Any = fairy.dbapi_connection
            # SQLAlchemy begins lazily, on a connection's first statement; a statement
            # sent here may be the first, so begin as it would (nothing in autocommit).
            if adapted._transaction is None:
                await adapted._start_transaction()
            self._raw = fairy.driver_connection
        return self._raw

    async def fetch(self, stmt: ClauseElement, params: Mapping[str, Any]) -> list[Row]:
        statement = compiled(stmt, self.conn.dialect)
        try:
            raw = await self._connection()
            records: Sequence[Any] = await raw.fetch(statement.sql, *statement.args(params))
        except Exception as exc:
            raise await self._translated(exc, statement.sql) from exc
        return [dict(r) for r in records]

    async def fetchrow(self, stmt: ClauseElement, params: Mapping[str, Any]) -> Row | None:
        statement = compiled(stmt, self.conn.dialect)
        try:
            raw = await self._connection()
            record = await raw.fetchrow(statement.sql, *statement.args(params))
        except Exception as exc:
            raise await self._translated(exc, statement.sql) from exc
        return dict(record) if record is not None else None

    async def _translated(self, exc: Exception, sql: str) -> Exception:
        if isinstance(exc, DBAPIError):
            return exc
        dead = means_dead_connection(exc)
        if dead:
            self._raw = None
            await self.conn.invalidate(exc)
            return OperationalError(sql, None, exc, connection_invalidated=True)
        return DBAPIError(sql, None, exc)
