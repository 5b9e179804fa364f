"""A burst far larger than the connection pool, against a healthy database: every request
queues for a connection and succeeds; none is told the database is unavailable.

The server runs with a small pool (4 connections) so that 1,000 requests in flight at once
wait for connections ~250 deep. The wait bound is raised to 60 s so that a slow, shared test
machine cannot turn a long queue into a busy 503 (that answer is tested in
tests/db/test_db_outage.py); a 5xx of any kind fails the test.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AppKeys
from tests.support.harness import ServerProcess, running_server
from tests.support.helpers import create_parent

BURST = 1000


@pytest.fixture
async def small_pool(database_url: str, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    env = {
        "SEENN_DB_POOL_SIZE": "4",
        "SEENN_DB_MAX_OVERFLOW": "0",
        "SEENN_DB_POOL_TIMEOUT_SECONDS": "60",
    }
    with running_server(database_url, tmp_path / "logs", env=env) as server:
        yield server


async def _burst(client: httpx.AsyncClient, requests: list[tuple[str, dict]]) -> Counter[int]:
    responses = await asyncio.gather(*(client.post(path, json=body) for path, body in requests))
    for response in responses:
        if response.status_code >= 500:
            raise AssertionError(f"{response.status_code}: {response.text}")
    return Counter(r.status_code for r in responses)


async def test_a_thousand_concurrent_writes_queue_for_the_pool_and_all_succeed(
    small_pool: ServerProcess, keys: AppKeys
) -> None:
    """createBatch(1,000)'s shape: 1,000 children created at once, then completed at once,
    all on one parent (one row lock) and one user (one event stream)."""
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(
        base_url=f"{small_pool.url}/v1", headers=keys.auth(), timeout=120, limits=limits
    ) as client:
        parent = await create_parent(client, BURST, userId="burst_user")
        creates = [
            (
                "/jobs",
                {
                    "jobType": "image",
                    "title": f"Child {i}",
                    "userId": "burst_user",
                    "parentJobId": parent["id"],
                    "childIndex": i,
                },
            )
            for i in range(BURST)
        ]
        created = await _burst(client, creates)
        assert created == Counter({201: BURST}), created
        children = (await client.get(f"/jobs/{parent['id']}/children")).json()["children"]
        assert len(children) == BURST
        completed = await _burst(client, [(f"/jobs/{c['id']}/complete", {}) for c in children])
        assert completed == Counter({200: BURST}), completed
        final = (await client.get(f"/jobs/{parent['id']}")).json()
    assert final["status"] == "completed"
    assert final["children"]["completed"] == BURST
    assert "SERVER_BUSY" not in small_pool.log()
