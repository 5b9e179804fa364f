"""``Lease``: a pooled connection lent without SQLAlchemy's ``AsyncConnection`` when one is
idle, and through SQLAlchemy otherwise, with the pool's accounting intact either way.

The short path reads private state of SQLAlchemy's pool (``app/db/driver.py``); the first
test fails if an upgrade of SQLAlchemy makes it silently fall back to the long path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.driver import Driver, Lease
from app.db.engine import create_engine
from app.settings import Settings

SELECT = text("select pg_backend_pid() as pid")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    settings = Settings(database_url=database_url, db_pool_size=2, db_max_overflow=1)
    engine = create_engine(database_url, settings)
    yield engine
    await engine.dispose()


async def _pid(lease: Lease) -> int:
    row = await Driver(lease).fetchrow(SELECT, {})
    assert row is not None
    return int(row["pid"])


async def _warm(engine: AsyncEngine) -> int:
    """Open one pooled connection and give it back idle; its backend's pid."""
    async with Lease(engine) as lease:
        assert not lease.direct  # an empty pool connects through SQLAlchemy
        return await _pid(lease)


async def test_an_idle_connection_is_lent_directly_and_given_back(engine: AsyncEngine) -> None:
    pid = await _warm(engine)
    pool = engine.sync_engine.pool
    for _ in range(3):
        async with Lease(engine) as lease:
            assert lease.direct
            assert pool.checkedout() == 1  # type: ignore[attr-defined]
            assert await _pid(lease) == pid
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        assert pool.checkedin() == 1  # type: ignore[attr-defined]


async def test_its_statements_commit_on_their_own(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    await _warm(engine)
    table = "lease_autocommit"
    await db.execute(f"create table if not exists {table} (n int)")
    await db.execute(f"truncate {table}")
    async with Lease(engine) as lease:
        assert lease.direct
        await Driver(lease).fetch(text(f"insert into {table} values (1) returning n"), {})
        # Seen by another session while the lease is still open: nothing is left to commit.
        assert await db.fetchval(f"select count(*) from {table}") == 1
        # Statements through SQLAlchemy on the same lease are in autocommit too.
        conn = lease.conn
        assert isinstance(conn, AsyncConnection)
        await conn.execute(text(f"insert into {table} values (2)"))
        assert await db.fetchval(f"select count(*) from {table}") == 2
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    await db.execute(f"drop table {table}")


async def test_a_pool_at_its_overflow_limit_lends_through_sqlalchemy(engine: AsyncEngine) -> None:
    """Pool of 2 plus 1 overflow, all three out, one given back: a connection is idle but the
    pool would wait on its queue, which only SQLAlchemy's own path can do."""
    held = [await engine.connect() for _ in range(3)]
    for conn in held:
        await conn.exec_driver_sql("select 1")
    await held[0].close()
    pool = engine.sync_engine.pool
    assert pool.checkedin() == 1  # type: ignore[attr-defined]
    async with Lease(engine) as lease:
        assert not lease.direct
        await _pid(lease)
    for conn in held[1:]:
        await conn.close()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_many_leases_at_once_share_the_pool_and_return_every_connection(
    engine: AsyncEngine,
) -> None:
    """Sixty leases at once on a pool of 2 plus 1 overflow: they queue, each runs, at most
    three sessions serve them, and every connection comes back."""
    await _warm(engine)

    async def one() -> tuple[int, bool]:
        async with Lease(engine) as lease:
            pid = await _pid(lease)
            await asyncio.sleep(0)  # hold the connection across a turn of the loop
            return pid, lease.direct

    results = await asyncio.gather(*(one() for _ in range(60)))
    pids = {pid for pid, _ in results}
    assert 1 <= len(pids) <= 3
    assert any(direct for _, direct in results)
    assert any(not direct for _, direct in results)
    pool = engine.sync_engine.pool
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert pool.checkedin() <= 2  # type: ignore[attr-defined]


async def test_a_dead_connection_is_discarded_not_lent_again(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    pid = await _warm(engine)
    await db.execute("select pg_terminate_backend($1)", pid)
    async with Lease(engine) as lease:
        assert lease.direct  # the pool cannot know the session is gone
        with pytest.raises(OperationalError) as caught:
            await _pid(lease)
        assert caught.value.connection_invalidated
    pool = engine.sync_engine.pool
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    async with Lease(engine) as lease:
        assert await _pid(lease) != pid
