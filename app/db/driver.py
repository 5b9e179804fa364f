"""The hot statements' short path: asyncpg itself, on the pooled SQLAlchemy connection.

A statement is still written once, with SQLAlchemy, in ``app/db``. It is compiled once per
dialect (SQL with ``$n`` placeholders, the parameter order and each parameter's bind
processor: JSONB through the engine's orjson serialiser, exactly as SQLAlchemy would send
it), and then runs on the connection's own asyncpg connection: no per-execution compile
cache lookup, cursor, result object or greenlet hop. The connection, its transaction, its
pool and its JSON codecs are SQLAlchemy's; rows come back as plain dicts with the same keys
and values as ``result.mappings()``.

Errors keep SQLAlchemy's shape for the callers (``DBAPIError`` with ``.orig``): a
connection found dead is invalidated, so the pool discards it instead of lending it again,
and the error says ``connection_invalidated``, as SQLAlchemy's own path does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

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


class Driver:
    """The asyncpg connection under one pooled connection, inside its transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._raw: Any = None

    async def _connection(self) -> Any:
        if self._raw is None:
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
