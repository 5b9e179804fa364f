"""Reliability under faults, with real processes: the server is SIGKILLed, PostgreSQL is
crashed and restarted, all under a steady load of writes.

After each fault: every write the server acknowledged (2xx) is in the database, every
parent's counters, progress and status equal a recount of its children, and every event
stream is gapless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import AppKeys, make_app
from tests.support.harness import running_server, start_server
from tests.support.pgcluster import (
    PgCluster,
    assert_no_server_errors,
    create_migrated_database,
    pg_cluster,
)
from tests.support.sse_subscriber import Subscriber
from tests.support.writeload import (
    WriteLoad,
    assert_acknowledged_writes_durable,
    assert_event_streams_gapless,
    assert_parents_match_recount,
)

PARENTS, CHILDREN, PLAIN_WORKERS = 3, 40, 6
RECOVER_WITHIN = 15.0  # generous: "within seconds", not a speed measurement
# The load (and its 503 retries) comes from one key: rate limits are not under test here.
LOAD_ENV = {"SEENN_RATE_LIMIT_ENABLED": "false"}


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _start_load(
    load: WriteLoad, parents: list[dict], children: int = CHILDREN, plain: int = PLAIN_WORKERS
) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(load.plain_worker(n)) for n in range(plain)]
    tasks += [asyncio.create_task(load.run_parent(p, children)) for p in parents]
    return tasks


async def test_sigkill_under_write_load_loses_no_acknowledged_write(
    database_url: str, db: asyncpg.Connection, keys: AppKeys, tmp_path: Path
) -> None:
    server = start_server(database_url, tmp_path / "logs", env=LOAD_ENV)
    try:
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers=keys.auth(), timeout=30
        ) as client:
            load = WriteLoad(client)
            parents = await load.parents(PARENTS, CHILDREN)
            tasks = _start_load(load, parents)
            await _until(lambda: load.ledger.writes_acked >= 200, 60, "200 acknowledged writes")
            server.process.kill()  # SIGKILL: no shutdown, answers in flight are lost
            server.process.wait(10)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        server.stop()
    ledger = load.ledger
    assert ledger.transport_errors > 0, "the kill interrupted no write"
    assert not ledger.unexpected, ledger.unexpected[:5]
    assert all(s < 300 for s in ledger.statuses), ledger.statuses
    await assert_acknowledged_writes_durable(db, ledger)
    assert await assert_parents_match_recount(db, keys.app_id) == PARENTS
    assert await assert_event_streams_gapless(db, keys.app_id) >= ledger.writes_acked
    # A new server picks up where the killed one stopped: finish one parent's children.
    with running_server(database_url, tmp_path / "logs-after") as after:
        async with httpx.AsyncClient(
            base_url=f"{after.url}/v1", headers=keys.auth(), timeout=30
        ) as client:
            await _finish_all_children(client, parents[0])
            final = (await client.get(f"/jobs/{parents[0]['id']}")).json()
        assert_no_server_errors(after.log())
    assert final["status"] == "completed" and final["children"]["pending"] == 0, final
    assert final["children"]["running"] == 0
    assert await assert_parents_match_recount(db, keys.app_id) == PARENTS


async def _finish_all_children(client: httpx.AsyncClient, parent: dict) -> None:
    """Create the parent's missing children and complete every unfinished one."""
    listed = (await client.get(f"/jobs/{parent['id']}/children")).json()["children"]
    by_index = {c["childIndex"]: c for c in listed}
    for index in range(CHILDREN):
        child = by_index.get(index)
        if child is None:
            body = {
                "jobType": "late",
                "userId": parent["userId"],
                "title": f"late {index}",
                "parentJobId": parent["id"],
                "childIndex": index,
            }
            created = await client.post("/jobs", json=body)
            assert created.status_code == 201, created.text
            child = created.json()
        if child["status"] in ("pending", "running"):
            done = await client.post(f"/jobs/{child['id']}/complete", json={})
            assert done.status_code == 200, done.text


# --- database restart under load ----------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    with pg_cluster(tmp_path_factory.mktemp("restart") / "pg") as c:
        yield c


@pytest.fixture(scope="module")
def restart_db(cluster: PgCluster) -> str:
    return create_migrated_database(cluster, "seenn_restart")


async def _restart_and_time_recovery(
    load: WriteLoad, cluster: PgCluster, mode: str, down_seconds: float
) -> float:
    """Restart PostgreSQL while the load runs; seconds from "up again" to the next ack."""
    acked_before = load.ledger.writes_acked
    await _until(lambda: load.ledger.writes_acked >= acked_before + 60, 60, "load before restart")
    await asyncio.to_thread(cluster.restart, mode, down_seconds)
    up_at = time.monotonic()
    await _until(
        lambda: bool(load.ledger.ack_times) and load.ledger.ack_times[-1] > up_at,
        RECOVER_WITHIN,
        "the first acknowledged write after the restart",
    )
    return load.ledger.ack_times[-1] - up_at


async def test_database_restart_under_load_gives_only_503s_and_loses_nothing(
    cluster: PgCluster, restart_db: str, tmp_path: Path
) -> None:
    keys = await make_app(restart_db)
    with running_server(restart_db, tmp_path / "logs", env=LOAD_ENV) as server:
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers=keys.auth(), timeout=30
        ) as client:
            # Retries carry the write's Idempotency-Key, as an SDK retry of a POST does.
            load = WriteLoad(client, retry_unavailable=True, idempotent=True)
            parents = await load.parents(PARENTS, CHILDREN)
            tasks = _start_load(load, parents)
            try:
                crash = await _restart_and_time_recovery(load, cluster, "immediate", 0.0)
                clean = await _restart_and_time_recovery(load, cluster, "fast", 1.0)
            finally:
                load.stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
        log = server.log()
    ledger = load.ledger
    print(
        f"recovery: {crash:.2f}s after crash restart, {clean:.2f}s after fast restart; "
        f"statuses {dict(ledger.statuses)}, {ledger.replayed} replayed"
    )
    assert ledger.statuses[503] > 0, "no request met the outage"
    assert all(s < 500 or s == 503 for s in ledger.statuses), ledger.statuses
    assert ledger.transport_errors == 0
    assert not ledger.unexpected, ledger.unexpected[:5]
    assert_no_server_errors(log)
    db = await asyncpg.connect(restart_db)
    try:
        await assert_acknowledged_writes_durable(db, ledger)
        assert await assert_parents_match_recount(db, keys.app_id) == PARENTS
        await assert_event_streams_gapless(db, keys.app_id)
        # Keyed retries never ran a write twice: one job per acknowledged create.
        jobs = await db.fetchval("SELECT count(*) FROM jobs WHERE app_id = $1", keys.app_id)
        assert jobs == len(ledger.acked)
    finally:
        await db.close()
    assert ledger.resolved_by_reading == 0  # a keyed retry is answered, never refused


async def test_sse_subscriber_resumes_without_gap_across_database_restart(
    cluster: PgCluster, restart_db: str, tmp_path: Path
) -> None:
    """A subscriber that loses its stream while PostgreSQL crashes resumes with
    Last-Event-ID and ends up with every event of its stream, in order, none missing."""
    keys = await make_app(restart_db)
    with running_server(restart_db, tmp_path / "logs", env=LOAD_ENV) as server:
        sub = Subscriber(server.url, keys.public, "load_user")
        listening = asyncio.create_task(sub.run())
        try:
            await asyncio.wait_for(sub.connected.wait(), 15)
            async with httpx.AsyncClient(
                base_url=f"{server.url}/v1", headers=keys.auth(), timeout=30
            ) as client:
                load = WriteLoad(client, retry_unavailable=True, idempotent=True)
                parents = await load.parents(2, 12)
                tasks = _start_load(load, parents, children=12, plain=3)
                try:
                    await _until(lambda: len(sub.events) >= 40, 60, "events before the crash")
                    await asyncio.to_thread(cluster.stop, "immediate")
                    listening.cancel()  # the stream is lost while the database is down
                    await asyncio.gather(listening, return_exceptions=True)
                    listening = asyncio.create_task(sub.run())
                    await asyncio.sleep(0.5)
                    await asyncio.to_thread(cluster.start)
                    acked = load.ledger.writes_acked
                    await _until(lambda: load.ledger.writes_acked >= acked + 40, 60, "load after")
                finally:
                    load.stop.set()
                    await asyncio.wait_for(asyncio.gather(*tasks), 60)
            db = await asyncpg.connect(restart_db)
            try:
                rows = await db.fetch(
                    "SELECT e.seq, e.event, e.job_id"
                    " FROM events e JOIN event_streams s USING (stream_id)"
                    " WHERE s.app_id = $1 AND s.user_id = $2 ORDER BY e.seq",
                    keys.app_id,
                    "load_user",
                )
            finally:
                await db.close()
            expected = [(str(r["seq"]), r["event"], r["job_id"]) for r in rows]
            last = expected[-1]

            def caught_up() -> bool:
                got = sub.events
                return bool(got) and (
                    len(got) >= len(expected) or (got[-1].id, got[-1].event, got[-1].job_id) == last
                )

            await _until(caught_up, 30, "the subscriber to receive the stream's last event")
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
        log = server.log()
    assert sub.connects >= 2, "the subscriber never had to resume"
    # Every event exactly once: a resume from Last-Event-ID repeats nothing.
    assert [(e.id, e.event, e.job_id) for e in sub.events] == expected
    assert not load.ledger.unexpected, load.ledger.unexpected[:5]
    assert_no_server_errors(log)
