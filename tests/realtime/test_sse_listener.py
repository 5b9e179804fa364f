"""The LISTEN connection survives a database blip: it reconnects and catches up from the log.

Writes go through one server, the subscriber listens on another, and both poll the log
only once a minute: an event that reaches the subscriber within seconds after every
database connection was killed came through the second server's reconnected listener (or
the catch-up read it does on reconnecting), not through the safety-net poll and not through
the writing server's direct wake-up of its own subscribers.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from app.db.engine import plain_url
from app.db.migrate import upgrade
from tests.support.harness import ServerProcess, create_database, create_key, start_server
from tests.support.sse_client import open_sse


@pytest.fixture(scope="module")
def own_database(database_url: str) -> str:
    """A database of this module's own in the session's server, so killing its
    connections cannot disturb the other tests' servers."""
    url = create_database(database_url, "seenn_listener")
    upgrade(url)
    return url


@pytest.fixture(scope="module")
def replicas(own_database: str, workdir) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {"SEENN_SSE_POLL_INTERVAL_SECONDS": "60"}
    first = start_server(own_database, workdir / "sse-listener", env=env)
    try:
        second = start_server(own_database, workdir / "sse-listener", env=env)
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


@pytest.fixture
async def writer(replicas, own_database: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    key = await create_key(own_database, f"app_{secrets.token_hex(4)}")
    async with httpx.AsyncClient(
        base_url=f"{replicas[0].url}/v1",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as client:
        yield client, key


async def _post(client: httpx.AsyncClient, path: str, body: dict, key: str) -> dict:
    """POST with an idempotency key, retrying 503s as an SDK does while connections heal."""
    for _ in range(50):
        response = await client.post(path, json=body, headers={"Idempotency-Key": key})
        if response.status_code != 503:
            assert response.status_code in (200, 201), response.text
            return response.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} still 503 after 5 s")


async def _kill_connections(database_url: str) -> int:
    """Terminate every server connection to the database (a blip: restarts look the same
    to the application). Returns how many were killed."""
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        return await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()


async def test_listener_reconnects_after_a_blip_and_delivers_everything(
    replicas, own_database: str, writer
) -> None:
    client, key = writer
    listening = replicas[1]
    user = f"u_{secrets.token_hex(4)}"
    auth = {"Authorization": f"Bearer {key}"}
    async with open_sse(listening.url, {"userId": user}, auth) as stream:
        assert (await stream.next()).event == "connected"
        job = await _post(client, "/jobs", {"jobType": "t", "userId": user, "title": "j"}, "c")
        await _post(client, f"/jobs/{job['id']}/progress", {"progress": 10}, "p10")
        before = await stream.take(2, wait=5)
        assert [m.event for m in before] == ["job.started", "job.progress"]

        assert await _kill_connections(own_database) >= 1
        # Written at once, while the listener is down or reconnecting: its NOTIFY may be lost.
        for step in (20, 30, 40):
            await _post(client, f"/jobs/{job['id']}/progress", {"progress": step}, f"p{step}")
        after = await stream.take(3, wait=10)

    assert [m.data["progress"] for m in after] == [20, 30, 40]
    ids = [int(m.id) for m in before + after]
    assert ids == list(range(ids[0], ids[0] + 5)), ids
