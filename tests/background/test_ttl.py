"""TTL: an expired job reads as 404 at once; sweepers delete expired data, several at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.background.sweeper import SWEEP_GRACE, sweep_once
from app.db.engine import create_engine
from app.settings import Settings
from tests.conftest import AppKeys
from tests.support.harness import running_server
from tests.support.helpers import (
    assert_error,
    complete,
    create_child,
    create_job,
    create_parent,
    progress,
)


async def expire(db: asyncpg.Connection, ids: list[str], ago: str = "1 second") -> None:
    """Move ``expires_at`` into the past, as if ``ttlSeconds`` had elapsed ``ago``."""
    await db.execute(
        f"UPDATE jobs SET expires_at = now() - interval '{ago}' WHERE id = ANY($1)", ids
    )


async def present(db: asyncpg.Connection, ids: list[str]) -> set[str]:
    rows = await db.fetch("SELECT id FROM jobs WHERE id = ANY($1)", ids)
    return {r["id"] for r in rows}


async def events_of(db: asyncpg.Connection, ids: list[str]) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events WHERE job_id = ANY($1)", ids))


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def test_a_job_past_its_ttl_reads_as_404_at_once(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job = await create_job(client, ttlSeconds=60, userId="ttl_user")
    assert parse(job["expiresAt"]) - parse(job["createdAt"]) == timedelta(seconds=60)
    assert (await client.get(f"/jobs/{job['id']}")).status_code == 200
    await expire(db, [job["id"]])
    error = assert_error(await client.get(f"/jobs/{job['id']}"), 404, "NOT_FOUND")
    assert error["details"] == {"id": job["id"]}
    listed = await client.get("/jobs", params={"userId": "ttl_user"})
    assert listed.status_code == 200 and listed.json()["jobs"] == []
    for action, body in (("progress", {"progress": 5}), ("complete", {}), ("cancel", {})):
        response = await client.post(f"/jobs/{job['id']}/{action}", json=body)
        assert_error(response, 404, "NOT_FOUND")
    # Nothing was written to the expired row.
    row = await db.fetchrow("SELECT status, progress FROM jobs WHERE id = $1", job["id"])
    assert (row["status"], row["progress"]) == ("pending", 0)


async def test_an_expired_parent_has_no_children_view_and_takes_no_new_children(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    parent = await create_parent(client, 3, ttlSeconds=60)
    await create_child(client, parent, 0)
    await expire(db, [parent["id"]])
    assert_error(await client.get(f"/jobs/{parent['id']}/children"), 404, "NOT_FOUND")
    late = await client.post(
        "/jobs",
        json={
            "jobType": "image",
            "userId": parent["userId"],
            "title": "late",
            "parentJobId": parent["id"],
            "childIndex": 1,
        },
    )
    assert_error(late, 400, "INVALID_PARENT")


async def make_population(client: httpx.AsyncClient) -> tuple[list[str], list[str]]:
    """Jobs of every shape, each with events; returns (to expire, to keep) ids."""
    doomed: list[str] = []
    kept: list[str] = []
    sem = asyncio.Semaphore(8)

    async def job(target: list[str], **fields: object) -> dict[str, object]:
        async with sem:
            created = await create_job(client, **fields)
            await progress(client, created["id"], 10)
        target.append(created["id"])
        return created

    async def family(target: list[str], children: int) -> None:
        parent = await create_parent(client, children)
        target.append(parent["id"])
        for i in range(children):
            async with sem:
                child = await create_child(client, parent, i)
                await progress(client, child["id"], 50)
            target.append(child["id"])

    await asyncio.gather(*(job(doomed) for _ in range(30)), *(job(kept) for _ in range(10)))
    await asyncio.gather(*(family(doomed, 6) for _ in range(5)), family(kept, 4))
    # A child that expires on its own while its parent lives on.
    parent = await create_parent(client, 2)
    lonely = await create_child(client, parent, 0)
    await complete(client, lonely["id"])
    kept.append(parent["id"])
    doomed.append(lonely["id"])
    return doomed, kept


async def test_two_sweepers_at_once_delete_exactly_the_expired_jobs_and_their_events(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection, database_url: str
) -> None:
    doomed, kept = await make_population(client)
    kept_rows = await db.fetch("SELECT * FROM jobs WHERE id = ANY($1) ORDER BY id", kept)
    kept_events = await events_of(db, kept)
    assert await events_of(db, doomed) >= len(doomed)
    # Expire parents and plain jobs (their children go with them) and the lonely child.
    parents_and_plain = await db.fetch(
        "SELECT id FROM jobs WHERE id = ANY($1) AND (parent_job_id IS NULL"
        " OR parent_job_id <> ALL($2))",
        doomed,
        doomed,
    )
    # They expire in an hour; the sweepers run on a clock two hours ahead. (Expired on the
    # real clock, the session server's own sweeper could take them first.)
    await db.execute(
        "UPDATE jobs SET expires_at = now() + interval '1 hour' WHERE id = ANY($1)",
        [r["id"] for r in parents_and_plain],
    )
    later = datetime.now(UTC) + timedelta(hours=2)
    # Idempotency records: two past the 24 h window (on that clock too), one fresh.
    for key, age in (("old-1", "25 hours"), ("old-2", "48 hours"), ("fresh", "1 hour")):
        await db.execute(
            "INSERT INTO idempotency_keys VALUES ($1, 'test', $2, '\\x00', 201, '\\x7b7d',"
            f" now() - interval '{age}')",
            keys.app_id,
            key,
        )

    settings = Settings()
    engines: list[AsyncEngine] = [create_engine(database_url, settings) for _ in range(2)]
    try:
        results = await asyncio.gather(
            *(sweep_once(engine, batch_size=7, now=later) for engine in engines)
        )
    finally:
        for engine in engines:
            await engine.dispose()

    assert await present(db, doomed) == set()
    assert await events_of(db, doomed) == 0
    # Which sweeper took which batch is up to the scheduler (one may take them all); the
    # results count other tests' expired rows too, so only a lower bound holds.
    assert sum(r.jobs + r.children for r in results) >= len(doomed)
    after = await db.fetch("SELECT * FROM jobs WHERE id = ANY($1) ORDER BY id", kept)
    assert after == kept_rows
    assert await events_of(db, kept) == kept_events
    left = await db.fetch("SELECT key FROM idempotency_keys WHERE app_id = $1", keys.app_id)
    assert [r["key"] for r in left] == ["fresh"]


async def test_the_sweeper_leaves_jobs_within_the_grace_period(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    job = await create_job(client)
    await expire(db, [job["id"]], "1 second")
    engine = create_engine(database_url, Settings())
    try:
        await sweep_once(engine)
        assert await present(db, [job["id"]]) == {job["id"]}
        later = datetime.now(UTC) + SWEEP_GRACE + timedelta(seconds=1)
        await sweep_once(engine, now=later)
    finally:
        await engine.dispose()
    assert await present(db, [job["id"]]) == set()


async def test_the_server_sweeps_in_the_background(
    database_url: str, workdir: Path, keys: AppKeys, db: asyncpg.Connection
) -> None:
    env = {"SEENN_SWEEP_INTERVAL_SECONDS": "0.2"}
    with running_server(database_url, workdir / "logs-sweeper", env=env) as server:
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers=keys.auth(), timeout=30
        ) as client:
            gone = await create_job(client)
            stays = await create_job(client)
            await expire(db, [gone["id"]], "1 hour")
            for _ in range(200):  # up to ~20 s
                if not await present(db, [gone["id"]]):
                    break
                await asyncio.sleep(0.1)
            assert await present(db, [gone["id"], stays["id"]]) == {stays["id"]}
            assert (await client.get(f"/jobs/{stays['id']}")).status_code == 200


async def test_a_child_of_an_expired_parent_takes_no_writes_and_reads_as_not_found(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    parent = await create_parent(client, 2, ttlSeconds=60)
    child = await create_child(client, parent, 0, ttlSeconds=3600)
    await progress(client, child["id"], 30)
    await expire(db, [parent["id"]])
    events_before = await events_of(db, [child["id"], parent["id"]])
    writes = (
        ("progress", {"progress": 60}),
        ("complete", {}),
        ("fail", {"error": {"code": "E", "message": "m"}}),
        ("cancel", {}),
    )
    for action, body in writes:
        response = await client.post(f"/jobs/{child['id']}/{action}", json=body)
        error = assert_error(response, 404, "NOT_FOUND")
        assert error["details"] == {"id": child["id"]}
    # Nothing changed: neither the child, nor the parent's aggregates, nor the event log.
    row = await db.fetchrow("SELECT status, progress FROM jobs WHERE id = $1", child["id"])
    assert (row["status"], row["progress"]) == ("running", 30)
    row = await db.fetchrow(
        "SELECT progress, running_children FROM jobs WHERE id = $1", parent["id"]
    )
    assert (row["progress"], row["running_children"]) == (15, 1)
    assert await events_of(db, [child["id"], parent["id"]]) == events_before


async def test_a_child_expires_with_its_parent_whatever_its_own_ttl(
    client: httpx.AsyncClient,
) -> None:
    # A child expiring first would stay in its parent's counters and leave the parent
    # running for good; one outliving the parent could never be read.
    parent = await create_parent(client, 2, ttlSeconds=3600)
    short = await create_child(client, parent, 0, ttlSeconds=60)
    long = await create_child(client, parent, 1, ttlSeconds=7200)
    assert short["expiresAt"] == long["expiresAt"] == parent["expiresAt"]
