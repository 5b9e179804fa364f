"""``seenn-server serve --workers N``: N processes share one port, each a full server (its
own pool and LISTEN connection); writes and realtime work across them; SIGTERM stops all."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import httpx

from app.db.engine import plain_url
from tests.conftest import AppKeys
from tests.support.harness import _children, start_server
from tests.support.helpers import create_job, progress
from tests.support.sse_client import open_sse


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def _listeners(database_url: str, database: str) -> int:
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
            database,
        )
    finally:
        await conn.close()


async def test_two_workers_serve_one_port_and_stop_together(
    database_url: str, keys: AppKeys, tmp_path: Path
) -> None:
    database = database_url.rsplit("/", 1)[1].split("?")[0]
    before = await _listeners(database_url, database)
    server = start_server(database_url, tmp_path / "logs", args=("--workers", "2"))
    try:
        workers = _children(server.process.pid)
        assert len(workers) == 2, workers
        # Each worker holds its own LISTEN connection once its app has started.
        for _ in range(200):
            if await _listeners(database_url, database) - before >= 2:
                break
            await asyncio.sleep(0.05)
        assert await _listeners(database_url, database) - before == 2
        # Fresh connections (no keep-alive) land on either worker; every write succeeds
        # and a subscriber sees all of them, whichever worker wrote them.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(
                base_url=f"{server.url}/v1", headers=keys.auth(), limits=limits, timeout=30
            ) as client,
            open_sse(server.url, {"userId": "u_workers"}, keys.auth(keys.public)) as stream,
        ):
            assert (await stream.next()).event == "connected"
            job = await create_job(client, userId="u_workers")
            for value in range(1, 21):
                await progress(client, job["id"], value)
            got = await stream.take(21)
        assert [m.event for m in got] == ["job.started"] + ["job.progress"] * 20
        assert [m.data["progress"] for m in got[1:]] == list(range(1, 21))
        server.stop(signal.SIGTERM)
        assert server.process.returncode == 0, server.log()
        assert not [pid for pid in workers if _alive(pid)]
    finally:
        server.stop()
