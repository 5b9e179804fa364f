"""Database outages and overload: 503 with the envelope, never a 500 or a hang, and recovery
without a restart.

These tests run their own PostgreSQL cluster (``tests/support/pgcluster.py``), which they stop,
freeze (SIGSTOP) and start again under a real server process.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.harness import ServerProcess, create_key, running_server
from tests.support.helpers import assert_error, create_child, create_job, create_parent
from tests.support.pgcluster import (
    PgCluster,
    assert_no_server_errors,
    create_migrated_database,
    frozen,
    pg_cluster,
)

# Generous bounds: these prove "answers instead of hanging", they do not measure speed.
ANSWER_WITHIN = 20.0
RECOVER_WITHIN = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    with pg_cluster(tmp_path_factory.mktemp("outage") / "pg") as c:
        yield c


@pytest.fixture(scope="module")
def outage_db(cluster: PgCluster) -> str:
    return create_migrated_database(cluster, "seenn_outage")


@pytest.fixture
def up(cluster: PgCluster) -> PgCluster:
    """The cluster, running (a previous test may have left it stopped)."""
    if not cluster.running():
        cluster.start()
    return cluster


@pytest.fixture
async def api_key(outage_db: str, up: PgCluster) -> str:
    return await create_key(outage_db, f"app_{secrets.token_hex(6)}")


async def _client(server: ServerProcess, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{server.url}/v1",
        headers={"Authorization": f"Bearer {key}"},
        timeout=ANSWER_WITHIN + 10,
    )


@pytest.fixture
async def served(
    outage_db: str, tmp_path: Path, api_key: str
) -> AsyncIterator[tuple[ServerProcess, httpx.AsyncClient]]:
    with running_server(outage_db, tmp_path / "logs") as server:
        async with await _client(server, api_key) as client:
            yield server, client


def _every_endpoint(plain: dict[str, Any], parent: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """One request per endpoint (method, path, JSON body)."""
    job = plain["id"]
    return [
        ("POST", "/jobs", {"jobType": "t", "userId": "user_1", "title": "x"}),
        ("GET", f"/jobs/{job}", None),
        ("GET", "/jobs?userId=user_1", None),
        ("GET", f"/jobs/{parent['id']}/children", None),
        ("POST", f"/jobs/{job}/progress", {"progress": 10}),
        ("POST", f"/jobs/{job}/complete", {}),
        ("POST", f"/jobs/{job}/fail", {"error": {"code": "E", "message": "m"}}),
        ("POST", f"/jobs/{job}/cancel", {}),
    ]


async def _timed(
    client: httpx.AsyncClient, method: str, path: str, body: Any
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.request(method, path, json=body)
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response) -> None:
    """A 503 in the envelope, with a Retry-After in whole seconds."""
    assert_error(response, 503, "SERVICE_UNAVAILABLE")
    assert response.headers["retry-after"].isdigit(), response.headers


def assert_busy(response: httpx.Response) -> None:
    """A 503 that says the server is busy (not the database down), with a Retry-After."""
    error = assert_error(response, 503, "SERVER_BUSY")
    assert "busy" in error["message"], error
    assert response.headers["retry-after"].isdigit(), response.headers


async def _wait_until_2xx(client: httpx.AsyncClient, path: str) -> float:
    """Seconds until ``GET path`` succeeds again; only 503s are acceptable meanwhile."""
    started = time.monotonic()
    while True:
        response = await client.get(path)
        if response.status_code < 300:
            return time.monotonic() - started
        assert_unavailable(response)
        assert time.monotonic() - started < RECOVER_WITHIN, "did not recover"
        await asyncio.sleep(0.1)


def _cancels(postgres_log: str) -> dict[str, int]:
    """How many statements PostgreSQL's log says were cancelled, by cause."""
    return {
        cause: postgres_log.count(f"canceling statement due to {cause}")
        for cause in ("statement timeout", "user request")
    }


async def _wait_for_lock_waiter(holder: asyncpg.Connection) -> None:
    """Wait until a server backend is blocked on a lock the test holds."""
    deadline = time.monotonic() + ANSWER_WITHIN
    while not await holder.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND application_name = 'seenn-server'"
    ):
        assert time.monotonic() < deadline, "no request ever waited on the lock"
        await asyncio.sleep(0.05)


async def test_every_endpoint_answers_503_while_database_is_down_and_recovers_without_restart(
    served: tuple[ServerProcess, httpx.AsyncClient], up: PgCluster
) -> None:
    server, client = served
    plain = await create_job(client)
    parent = await create_parent(client, 2)
    up.stop("fast")
    for method, path, body in _every_endpoint(plain, parent):
        response, took = await _timed(client, method, path, body)
        assert_unavailable(response)
        assert took < ANSWER_WITHIN, (method, path, took)
    up.start()
    await _wait_until_2xx(client, f"/jobs/{plain['id']}")
    assert server.process.poll() is None  # the same process recovered by itself
    child = await create_child(client, parent, 0)
    assert (
        await client.post(f"/jobs/{child['id']}/progress", json={"progress": 40})
    ).status_code == 200
    got = (await client.get(f"/jobs/{parent['id']}")).json()
    assert got["progress"] == 20 and got["children"]["running"] == 1
    assert_no_server_errors(server.log())


async def test_crash_restart_of_database_is_survived_by_pooled_connections(
    served: tuple[ServerProcess, httpx.AsyncClient], up: PgCluster
) -> None:
    """After an immediate (crash) restart every pooled connection is dead: pre-ping replaces
    them, so requests succeed at once or get a 503, never a 500."""
    server, client = served
    job = await create_job(client)
    # Fill the pool with several connections.
    await asyncio.gather(*(client.get(f"/jobs/{job['id']}") for _ in range(8)))
    up.restart("immediate")
    responses = await asyncio.gather(
        *(client.post(f"/jobs/{job['id']}/progress", json={"progress": p}) for p in range(1, 9))
    )
    for r in responses:
        if r.status_code != 200:
            assert_unavailable(r)
    await _wait_until_2xx(client, f"/jobs/{job['id']}")
    assert_no_server_errors(server.log())


async def test_stalled_database_gives_503_instead_of_hanging(
    up: PgCluster, outage_db: str, api_key: str, tmp_path: Path
) -> None:
    """A frozen server accepts TCP but never answers (like a partition): pooled connections,
    new connections and a request already inside a transaction all turn into 503s.

    The frozen server cannot enforce its statement_timeout, so the client-side command
    timeout (statement timeout + grace) ends the request inside a transaction.
    """
    env = {"SEENN_DB_STATEMENT_TIMEOUT_MS": "2000"}
    with running_server(outage_db, tmp_path / "logs", env=env) as server:
        async with await _client(server, api_key) as client:
            await _stall_scenario(server, client, up, outage_db)


async def _stall_scenario(
    server: ServerProcess, client: httpx.AsyncClient, up: PgCluster, outage_db: str
) -> None:
    job = await create_job(client)
    locked = await create_job(client)
    # Pool a few connections, then put one request inside a transaction waiting on a lock.
    await asyncio.gather(*(client.get(f"/jobs/{job['id']}") for _ in range(4)))
    holder = await asyncpg.connect(outage_db)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", locked["id"])
    in_flight = asyncio.create_task(
        _timed(client, "POST", f"/jobs/{locked['id']}/progress", {"progress": 50})
    )
    await _wait_for_lock_waiter(holder)
    with frozen(up):
        results = await asyncio.gather(
            *(_timed(client, m, p, b) for m, p, b in _every_endpoint(job, job)[:3]),
            in_flight,
        )
        for response, took in results:
            assert_unavailable(response)
            assert took < ANSWER_WITHIN, took
    await tx.rollback()
    await holder.close()
    await _wait_until_2xx(client, f"/jobs/{job['id']}")
    # The write that timed out changed nothing.
    assert (await client.get(f"/jobs/{locked['id']}")).json()["progress"] == 0
    assert_no_server_errors(server.log())


async def test_exhausted_pool_times_out_into_503_and_changes_nothing(
    outage_db: str, up: PgCluster, api_key: str, tmp_path: Path
) -> None:
    """One pooled connection, held by a write waiting on a row lock that the test holds:
    other requests wait ``db_pool_timeout_seconds`` and get a 503, then all recovers.

    The database itself is healthy, so the 503 says the server is busy (``SERVER_BUSY``),
    not that the database is unavailable.

    The configured pool timeout (0.5 s) is told from any other by the statement timeout
    (8 s), not by a clock: the waiting requests must get their 503s while the lock waiter
    still holds the connection. A pool timeout longer than 8 s (the 10 s default, say)
    would let the statement timeout free the connection first, and they would succeed.
    """
    env = {
        "SEENN_DB_POOL_SIZE": "1",
        "SEENN_DB_MAX_OVERFLOW": "0",
        "SEENN_DB_POOL_TIMEOUT_SECONDS": "0.5",
        "SEENN_DB_STATEMENT_TIMEOUT_MS": "8000",
    }
    with running_server(outage_db, tmp_path / "logs", env=env) as server:
        async with await _client(server, api_key) as client:
            job = await create_job(client)
            other = await create_job(client)
            holder = await asyncpg.connect(outage_db)
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job["id"])
            blocked = asyncio.create_task(
                client.post(f"/jobs/{job['id']}/progress", json={"progress": 30})
            )
            await _wait_for_lock_waiter(holder)  # it now holds the only pooled connection
            waiting = await asyncio.gather(
                *(
                    _timed(client, "POST", f"/jobs/{other['id']}/progress", {"progress": 70})
                    for _ in range(3)
                ),
                _timed(client, "GET", f"/jobs/{other['id']}", None),
                _timed(client, "POST", "/jobs", {"jobType": "t", "userId": "u9", "title": "x"}),
            )
            for response, took in waiting:
                assert_busy(response)
                assert took < ANSWER_WITHIN
            assert not blocked.done()
            await tx.rollback()
            await holder.close()
            assert (await blocked).status_code == 200
            assert (await client.get(f"/jobs/{other['id']}")).json()["progress"] == 0
            assert (await client.get("/jobs", params={"userId": "u9"})).json()["jobs"] == []
            ok = await client.post(f"/jobs/{other['id']}/progress", json={"progress": 70})
            assert ok.status_code == 200
    assert_no_server_errors(server.log())


async def test_statement_timeout_answers_503_and_rolls_back(
    outage_db: str, up: PgCluster, api_key: str, tmp_path: Path
) -> None:
    """A write stuck behind a lock longer than ``db_statement_timeout_ms`` is cancelled by
    PostgreSQL: 503 with Retry-After, nothing written, the connection reused.

    The configured statement timeout (2 s) is told from any other by the pool timeout
    (12 s), not by a clock: with one pooled connection, a read sent while the write waits on
    the lock gets the connection once the write is cancelled, so it succeeds only if the
    statement timeout is the shorter one (the 15 s default would make it a 503).
    PostgreSQL is the one that cancels, as its log shows.
    """
    env = {
        "SEENN_DB_STATEMENT_TIMEOUT_MS": "2000",
        "SEENN_DB_POOL_SIZE": "1",
        "SEENN_DB_MAX_OVERFLOW": "0",
        "SEENN_DB_POOL_TIMEOUT_SECONDS": "12",
    }
    with running_server(outage_db, tmp_path / "logs", env=env) as server:
        async with await _client(server, api_key) as client:
            parent = await create_parent(client, 2)
            child = await create_child(client, parent, 0)
            holder = await asyncpg.connect(outage_db)
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", parent["id"])
            cancelled_before = _cancels(up.log())
            stuck = asyncio.create_task(_timed(client, "POST", f"/jobs/{child['id']}/complete", {}))
            await _wait_for_lock_waiter(holder)  # it holds the only pooled connection
            read = await client.get(f"/jobs/{child['id']}")
            assert read.status_code == 200, read.text  # the connection came free first
            response, took = await stuck
            assert_unavailable(response)
            assert took < ANSWER_WITHIN
            # PostgreSQL cancelled it, not the client-side command timeout (statement
            # timeout + 2 s, which cancels "due to user request"). A backend logs an error
            # before it sends it to the client, so the line is in the log by now.
            cancels = _cancels(up.log())
            assert cancels["statement timeout"] == cancelled_before["statement timeout"] + 1
            assert cancels["user request"] == cancelled_before["user request"]
            await tx.rollback()
            await holder.close()
            assert (await client.get(f"/jobs/{child['id']}")).json()["status"] == "pending"
            done = await client.post(f"/jobs/{child['id']}/complete", json={})
            assert done.status_code == 200
            assert (await client.get(f"/jobs/{parent['id']}")).json()["progress"] == 50
    assert_no_server_errors(server.log())


async def test_server_started_while_database_is_down_serves_once_it_is_up(
    outage_db: str, up: PgCluster, api_key: str, tmp_path: Path
) -> None:
    """The server does not need the database to start: 503s first, then service."""
    up.stop("fast")
    with running_server(outage_db, tmp_path / "logs") as server:
        async with await _client(server, api_key) as client:
            response, took = await _timed(client, "GET", "/jobs?userId=user_1", None)
            assert_unavailable(response)
            assert took < ANSWER_WITHIN
            up.start()
            await _wait_until_2xx(client, "/jobs?userId=user_1")
            job = await create_job(client)
            assert (await client.get(f"/jobs/{job['id']}")).status_code == 200
    assert_no_server_errors(server.log())


async def test_readiness_fails_while_database_is_down_and_recovers(
    served: tuple[ServerProcess, httpx.AsyncClient], up: PgCluster
) -> None:
    """``/readyz`` answers 503 while the database is down and 200 once it is back."""
    server, _ = served
    async with httpx.AsyncClient(base_url=server.url, timeout=ANSWER_WITHIN + 10) as plain:
        assert (await plain.get("/readyz")).status_code == 200
        up.stop("fast")
        started = time.monotonic()
        assert (await plain.get("/readyz")).status_code == 503
        assert time.monotonic() - started < ANSWER_WITHIN
        up.start()
        deadline = time.monotonic() + RECOVER_WITHIN
        while (await plain.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "/readyz did not recover"
            await asyncio.sleep(0.1)
    assert_no_server_errors(server.log())


async def test_read_only_database_answers_writes_503_and_reads_200(
    served: tuple[ServerProcess, httpx.AsyncClient], up: PgCluster, outage_db: str
) -> None:
    """A server that turned read-only (a failover in progress) is a 503 for writes, not a
    500; reads go on, and writes resume when it is writable again."""
    server, client = served
    job = await create_job(client)
    admin = await asyncpg.connect(outage_db)
    try:
        await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await admin.execute("SELECT pg_reload_conf()")
        await _until_setting(outage_db, "on")
        response = await client.post(f"/jobs/{job['id']}/progress", json={"progress": 5})
        assert_unavailable(response)
        assert_unavailable(
            await client.post("/jobs", json={"jobType": "t", "userId": "u", "title": "x"})
        )
        assert (await client.get(f"/jobs/{job['id']}")).json()["progress"] == 0
    finally:
        await admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()
    await _until_setting(outage_db, "off")
    response = await client.post(f"/jobs/{job['id']}/progress", json={"progress": 5})
    assert response.status_code == 200, response.text
    assert_no_server_errors(server.log())


async def _until_setting(url: str, value: str) -> None:
    """Wait until new sessions see ``default_transaction_read_only = value``."""
    deadline = time.monotonic() + ANSWER_WITHIN
    while True:
        conn = await asyncpg.connect(url)
        try:
            if await conn.fetchval("SHOW default_transaction_read_only") == value:
                return
        finally:
            await conn.close()
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
