"""ETA compaction has its own one-connection pool (``app.main``: ``create_engine(url,
settings, pool_size=1)``): when every connection of the main pool is held by writes queued
on row locks, the completion samples a write appended are still folded into the key's
statistics, so they do not pile up for every reader of the key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx

from app.db.engine import plain_url
from tests.conftest import AppKeys
from tests.support.harness import start_server
from tests.support.helpers import complete, create_job, progress

POOL = 3  # the main pool of the server under test
KEY = "wf-compaction-pool"


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for a state of the database (polled); fail, saying which, if it never comes."""
    for _ in range(1500):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reached: {what}")


async def _blocked_by(db: asyncpg.Connection, pid: int) -> int:
    """Sessions waiting for a lock that session ``pid`` holds."""
    return await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
    )


async def test_compaction_folds_samples_while_every_main_pool_connection_is_held(
    database_url: str, keys: AppKeys, db: asyncpg.Connection, tmp_path: Path
) -> None:
    server = start_server(
        database_url,
        tmp_path / "logs",
        env={
            "SEENN_DB_POOL_SIZE": str(POOL),
            "SEENN_DB_MAX_OVERFLOW": "0",
            "SEENN_DB_POOL_TIMEOUT_SECONDS": "600",
            "SEENN_DB_STATEMENT_TIMEOUT_MS": "600000",  # writes wait as long as needed
        },
    )
    holder = await asyncpg.connect(plain_url(database_url))  # the jobs' row locks
    stats_holder = await asyncpg.connect(plain_url(database_url))  # the key's row lock
    held = holder.transaction()
    stats_held = stats_holder.transaction()
    try:
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers=keys.auth(), timeout=180
        ) as client:
            # A key with a statistics row (its default duration), a job of it to complete,
            # and one job per main-pool connection for writes to queue on.
            finishing = await create_job(client, workflowId=KEY, estimatedDuration=60_000)
            await progress(client, finishing["id"], 10)
            queued = [(await create_job(client, jobType="queued"))["id"] for _ in range(POOL)]

            # The key's statistics row locked from here: a compaction that starts waits on
            # it inside its transaction, holding a connection of whichever pool it uses.
            await stats_held.start()
            await stats_holder.execute(
                "SELECT 1 FROM eta_stats WHERE app_id = $1 AND mode = 'test' AND eta_key = $2"
                " FOR UPDATE",
                keys.app_id,
                KEY,
            )
            await held.start()
            await holder.execute(
                "SELECT 1 FROM jobs WHERE id = ANY($1::text[]) FOR UPDATE", queued[1:]
            )
            writes = [asyncio.create_task(progress(client, job_id, 50)) for job_id in queued[1:]]
            holder_pid = holder.get_server_pid()
            await _until(
                lambda: _is(_blocked_by(db, holder_pid), POOL - 1),
                f"{POOL - 1} writes queued on the jobs' row locks",
            )
            # The completion takes the last main-pool connection and commits its sample;
            # the last write then takes that connection (or queues for it) as well.
            await complete(client, finishing["id"])
            await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", queued[0])
            writes.append(asyncio.create_task(progress(client, queued[0], 50)))

            # Every main-pool connection is held by a queued write, and the compaction
            # waits on the key's row in the database: it has a connection of its own.
            await _until(
                lambda: _is(_blocked_by(db, holder_pid), POOL),
                f"all {POOL} main-pool connections queued on the jobs' row locks",
            )
            await _until(
                lambda: _is(_blocked_by(db, stats_holder.get_server_pid()), 1),
                "the compaction waiting on the key's statistics row",
            )
            await stats_held.commit()

            async def folded() -> bool:
                pending = await db.fetchval(
                    "SELECT count(*) FROM eta_samples WHERE app_id = $1 AND eta_key = $2",
                    keys.app_id,
                    KEY,
                )
                count = await db.fetchval(
                    "SELECT count FROM eta_stats WHERE app_id = $1 AND eta_key = $2",
                    keys.app_id,
                    KEY,
                )
                return pending == 0 and count == 1

            await _until(folded, "the completion's sample folded into the key's statistics")
            # ... while the main pool was still exhausted.
            assert await _blocked_by(db, holder_pid) == POOL
            assert not any(w.done() for w in writes)

            await held.commit()
            for result in await asyncio.gather(*writes):
                assert result["progress"] == 50
    finally:  # closing a connection ends its transaction
        await holder.close()
        await stats_holder.close()
        server.stop()


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
