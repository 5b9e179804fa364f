"""The event log's reads (app/db/eventlog.py) against the real database: what an SSE connect
and a stream read from it. Writes go through the application in the test process, so these
tests also run where the mutation run sees them (docs/mutation.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import eventlog
from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.repository import Owner
from app.settings import Settings
from tests.conftest import AppKeys
from tests.support.harness import create_database
from tests.support.helpers import complete, create_child, create_job, create_parent, fail, progress
from tests.support.oracle import parent_state


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[AsyncConnection]:
    engine = create_engine(database_url, Settings(database_url=database_url))
    async with engine.connect() as c:
        await c.execution_options(isolation_level="AUTOCOMMIT")
        yield c
    await engine.dispose()


@pytest.fixture
def api(inprocess_client: httpx.AsyncClient) -> httpx.AsyncClient:
    return inprocess_client


def owner(keys: AppKeys, mode: str = "test") -> Owner:
    return Owner(keys.app_id, mode)


def now() -> datetime:
    return datetime.now(UTC)


async def test_a_user_who_never_wrote_has_no_stream(conn, keys):
    stream = await eventlog.stream_for(conn, owner(keys), "nobody")
    assert stream == eventlog.Stream(eventlog.NO_STREAM, 0)
    assert await eventlog.oldest_seq(conn, eventlog.NO_STREAM) is None


async def test_the_stream_counts_the_users_events_and_belongs_to_one_app_mode_and_user(
    api, conn, keys, database_url
):
    job = await create_job(api, userId="u1")
    await progress(api, job["id"], 10)
    await complete(api, job["id"])
    stream = await eventlog.stream_for(conn, owner(keys), "u1")
    assert stream.stream_id > 0 and stream.last_seq == 3
    assert await eventlog.oldest_seq(conn, stream.stream_id) == 1
    # Another user, the other mode, another app: none of them sees this stream.
    assert (await eventlog.stream_for(conn, owner(keys), "u2")).stream_id == eventlog.NO_STREAM
    live = await eventlog.stream_for(conn, owner(keys, "live"), "u1")
    assert live.stream_id == eventlog.NO_STREAM
    other = Owner(keys.app_id + "x", "test")
    assert (await eventlog.stream_for(conn, other, "u1")).stream_id == eventlog.NO_STREAM


async def test_a_page_is_the_events_after_and_up_to_in_order_within_the_limit(api, conn, keys):
    job = await create_job(api, userId="u1")
    for value in (10, 20, 30):
        await progress(api, job["id"], value)
    await complete(api, job["id"])  # seqs 1..5
    sid = (await eventlog.stream_for(conn, owner(keys), "u1")).stream_id

    rows = await eventlog.page(conn, sid, 0, 5, 100)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["event"] for r in rows] == [
        "job.started",
        "job.progress",
        "job.progress",
        "job.progress",
        "job.completed",
    ]
    assert {r["job_id"] for r in rows} == {job["id"]}
    assert [json.loads(r["payload"])["progress"] for r in rows] == [0, 10, 20, 30, 100]
    assert all(r["parent_id"] is None for r in rows)

    # (after, upto]: the bounds themselves, and the limit from the low end.
    assert [r["seq"] for r in await eventlog.page(conn, sid, 1, 4, 100)] == [2, 3, 4]
    assert [r["seq"] for r in await eventlog.page(conn, sid, 1, 5, 2)] == [2, 3]
    assert await eventlog.page(conn, sid, 5, 5, 100) == []
    assert await eventlog.page(conn, sid + 1_000_000, 0, 5, 100) == []


async def test_a_childs_events_name_its_parent_and_the_parents_own_do_not(api, conn, keys):
    parent = await create_parent(api, 2, userId="u1")
    child = await create_child(api, parent, 0)
    await progress(api, child["id"], 50)
    sid = (await eventlog.stream_for(conn, owner(keys), "u1")).stream_id
    rows = await eventlog.page(conn, sid, 0, 100, 100)
    by_job = {(r["job_id"], r["event"]): r["parent_id"] for r in rows}
    assert by_job[(child["id"], "job.started")] == parent["id"]
    assert by_job[(child["id"], "job.progress")] == parent["id"]
    assert by_job[(parent["id"], "job.started")] is None
    assert by_job[(parent["id"], "parent.updated")] is None


async def test_sync_orders_the_named_job_then_parents_then_the_rest_in_creation_order(
    api, conn, keys
):
    first = await create_job(api, userId="u1")
    parent = await create_parent(api, 2, userId="u1")
    second = await create_job(api, userId="u1")
    kid = await create_child(api, parent, 0)
    ids = await eventlog.sync_ids(conn, owner(keys), "u1", None, now(), now(), 100)
    assert ids == [parent["id"], first["id"], second["id"], kid["id"]]

    named = await eventlog.sync_ids(conn, owner(keys), "u1", second["id"], now(), now(), 100)
    assert named == [second["id"]]
    narrowed = await eventlog.sync_ids(conn, owner(keys), "u1", parent["id"], now(), now(), 100)
    assert narrowed == [parent["id"], kid["id"]]


async def test_sync_keeps_the_named_job_and_the_parents_within_the_limit(api, conn, keys):
    plain = [await create_job(api, userId="u1") for _ in range(3)]
    parent = await create_parent(api, 1, userId="u1")
    ids = await eventlog.sync_ids(conn, owner(keys), "u1", None, now(), now(), 2)
    assert ids == [parent["id"], plain[-1]["id"]]  # then the newest other job
    named = await eventlog.sync_ids(conn, owner(keys), "u1", plain[0]["id"], now(), now(), 1)
    assert named == [plain[0]["id"]]


async def test_sync_leaves_out_jobs_that_ended_before_since_unless_named(api, conn, keys):
    done = await create_job(api, userId="u1")
    await complete(api, done["id"])
    failed = await create_job(api, userId="u1")
    await fail(api, failed["id"])
    running = await create_job(api, userId="u1")
    await progress(api, running["id"], 5)
    pending = await create_job(api, userId="u1")
    me = owner(keys)

    later = now() + timedelta(seconds=5)  # both ended before this
    assert await eventlog.sync_ids(conn, me, "u1", None, now(), later, 100) == [
        running["id"],
        pending["id"],
    ]
    earlier = now() - timedelta(minutes=5)
    assert await eventlog.sync_ids(conn, me, "u1", None, now(), earlier, 100) == [
        done["id"],
        failed["id"],
        running["id"],
        pending["id"],
    ]
    assert await eventlog.sync_ids(conn, me, "u1", done["id"], now(), later, 100) == [done["id"]]


async def test_sync_and_job_reads_see_only_the_owners_unexpired_jobs(api, conn, keys):
    mine = await create_job(api, userId="u1")
    short = await create_job(api, userId="u1", ttlSeconds=60)
    other_user = await create_job(api, userId="u2")
    live = await api.post(
        "/jobs",
        json={"jobType": "t", "userId": "u1", "title": "live"},
        headers=keys.auth(keys.live_secret),
    )
    assert live.status_code == 201, live.text
    me = owner(keys)
    in_two_minutes = now() + timedelta(minutes=2)  # after the short job's expiry

    assert await eventlog.sync_ids(conn, me, "u1", None, now(), now(), 100) == [
        mine["id"],
        short["id"],
    ]
    gone = await eventlog.sync_ids(conn, me, "u1", None, in_two_minutes, now(), 100)
    assert gone == [mine["id"]]
    other_app = Owner(keys.app_id + "x", "test")
    assert await eventlog.sync_ids(conn, other_app, "u1", None, now(), now(), 100) == []

    ids = [short["id"], "0" * 26, other_user["id"], live.json()["id"], mine["id"]]
    rows = await eventlog.jobs_by_id(conn, me, ids, now())
    assert [r["id"] for r in rows] == [short["id"], other_user["id"], mine["id"]]
    assert rows[0]["user_id"] == "u1" and rows[1]["user_id"] == "u2"
    later = await eventlog.jobs_by_id(conn, me, ids, in_two_minutes)
    assert [r["id"] for r in later] == [other_user["id"], mine["id"]]
    live_rows = await eventlog.jobs_by_id(conn, owner(keys, "live"), ids, now())
    assert [r["id"] for r in live_rows] == [live.json()["id"]]


@pytest.fixture
async def private_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database of this test alone: pruning is database-wide."""
    import asyncio

    url = await asyncio.to_thread(create_database, database_url, "seenn_prune")
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url, Settings(database_url=url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def private_conn(private_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with private_engine.connect() as c:
        await c.execution_options(isolation_level="AUTOCOMMIT")
        yield c


async def insert_events(conn: AsyncConnection, seconds_ago: list[float]) -> None:
    from sqlalchemy import text

    for seq, age in enumerate(seconds_ago, start=1):
        await conn.execute(
            text(
                "INSERT INTO events (stream_id, seq, job_id, event, payload, created_at)"
                " VALUES (1, :seq, 'j', 'job.progress', '{}',"
                " now() - make_interval(secs => :age))"
            ),
            {"seq": seq, "age": age},
        )


async def seqs_left(conn: AsyncConnection) -> list[int]:
    from sqlalchemy import text

    return [r[0] for r in await conn.execute(text("SELECT seq FROM events ORDER BY seq"))]


async def test_pruning_deletes_a_batch_of_the_events_older_than_the_retention(private_conn):
    hours_ago = [30, 29, 28, 2, 1]  # retention 24 h: the first three are due
    await insert_events(private_conn, [h * 3600 for h in hours_ago])

    assert await eventlog.prune_batch(private_conn, 24, 2) == 2
    left = await seqs_left(private_conn)
    assert len(left) == 3 and left[-2:] == [4, 5]
    assert await eventlog.prune_batch(private_conn, 24, 2) == 1
    assert await seqs_left(private_conn) == [4, 5]
    assert await eventlog.prune_batch(private_conn, 24, 2) == 0
    assert await eventlog.prune_batch(private_conn, 1.5, 10) == 1  # fractional hours count
    assert await seqs_left(private_conn) == [5]


async def test_an_event_exactly_as_old_as_the_retention_is_kept(private_engine):
    # In one transaction now() stands still: the event is exactly 10 h old when pruned.
    async with private_engine.connect() as conn:
        await insert_events(conn, [36_000, 36_000.001])
        assert await eventlog.prune_batch(conn, 10, 10) == 1
        assert await seqs_left(conn) == [1]
        await conn.rollback()


async def test_the_retention_is_exact_to_the_second(private_conn):
    # 10 h is 36 000 s: 5 s either side of it (the slack for the time this test takes).
    await insert_events(private_conn, [36_005, 35_995])
    assert await eventlog.prune_batch(private_conn, 10, 10) == 1
    assert await seqs_left(private_conn) == [2]


async def test_sync_puts_the_named_parent_before_its_children_and_unfinished_before_ended(
    api, conn, keys
):
    parent = await create_parent(api, 2, userId="u1")
    kids = [await create_child(api, parent, i) for i in range(2)]
    me = owner(keys)
    assert await eventlog.sync_ids(conn, me, "u1", parent["id"], now(), now(), 1) == [parent["id"]]
    # A job still running outranks a newer one that ended inside the window.
    await progress(api, kids[0]["id"], 10)
    ended = await create_job(api, userId="u2")
    running = await create_job(api, userId="u2")
    await complete(api, ended["id"])
    newer_ended = await create_job(api, userId="u2")
    await complete(api, newer_ended["id"])
    earlier = now() - timedelta(minutes=5)
    assert await eventlog.sync_ids(conn, me, "u2", None, now(), earlier, 1) == [running["id"]]


async def test_the_sync_window_and_the_expiry_are_exact(api, conn, keys, db):
    done = await create_job(api, userId="u1")
    await complete(api, done["id"])
    row = await db.fetchrow("SELECT completed_at, expires_at FROM jobs WHERE id = $1", done["id"])
    me = owner(keys)
    # Ended exactly at ``since``: still in the window.
    at_since = await eventlog.sync_ids(conn, me, "u1", None, now(), row["completed_at"], 100)
    assert at_since == [done["id"]]
    # At its expiry instant a job is gone, for job.sync and for the rows it reads.
    expiry = row["expires_at"]
    early = row["completed_at"]
    assert await eventlog.sync_ids(conn, me, "u1", None, expiry, early, 100) == []
    assert await eventlog.jobs_by_id(conn, me, [done["id"]], expiry) == []
    just_before = expiry - timedelta(milliseconds=1)
    assert await eventlog.sync_ids(conn, me, "u1", None, just_before, early, 100) == [done["id"]]
    assert len(await eventlog.jobs_by_id(conn, me, [done["id"]], just_before)) == 1


async def test_a_familys_writes_append_these_events_in_this_order(api, conn, keys):
    """Every write's events as the log stores them (what SSE replays): the child's own
    event, then ``child.progress`` and ``parent.updated`` about the parent (its state from
    the independent oracle), then the parent's terminal event when it ends."""
    parent = await create_parent(api, 2, userId="u1")
    c0 = await create_child(api, parent, 0)
    c1 = await create_child(api, parent, 1)
    await progress(api, c0["id"], 40)
    await complete(api, c0["id"])
    await fail(api, c1["id"])
    other = await create_parent(api, 2, userId="u1")
    d0 = await create_child(api, other, 0)
    await progress(api, d0["id"], 10)
    cancelled = await api.post(f"/jobs/{other['id']}/cancel", json={"reason": "stop"})
    assert cancelled.status_code == 200, cancelled.text
    name = {parent["id"]: "P", c0["id"]: "C0", c1["id"]: "C1", other["id"]: "Q", d0["id"]: "D0"}
    sid = (await eventlog.stream_for(conn, owner(keys), "u1")).stream_id
    rows = await eventlog.page(conn, sid, 0, 1000, 1000)
    got = [(r["event"], name[r["job_id"]], name.get(r["parent_id"])) for r in rows]
    assert got == [
        ("job.started", "P", None),
        ("job.started", "C0", "P"),
        ("job.started", "C1", "P"),
        ("job.progress", "C0", "P"),
        ("child.progress", "P", None),
        ("parent.updated", "P", None),
        ("job.completed", "C0", "P"),
        ("child.progress", "P", None),
        ("parent.updated", "P", None),
        ("job.failed", "C1", "P"),
        ("child.progress", "P", None),
        ("parent.updated", "P", None),
        ("job.completed", "P", None),
        ("job.started", "Q", None),
        ("job.started", "D0", "Q"),
        ("job.progress", "D0", "Q"),
        ("child.progress", "Q", None),
        ("parent.updated", "Q", None),
        ("job.cancelled", "D0", "Q"),
        ("job.cancelled", "Q", None),
    ]
    payloads = [json.loads(r["payload"]) for r in rows]
    # child.progress: the parent's view, keyed by the parent, with the child that moved.
    children_then = [
        [("running", 40), ("pending", 0)],
        [("completed", 100), ("pending", 0)],
        [("completed", 100), ("failed", 0)],
    ]
    moved = [(c0, "running", 40), (c0, "completed", 100), (c1, "failed", 0)]
    for seq, children, (child, status, value) in zip((5, 8, 11), children_then, moved, strict=True):
        expected = parent_state("average", 2, children)
        for payload in (payloads[seq - 1], payloads[seq]):  # child.progress, parent.updated
            assert payload["id"] == parent["id"]
            assert (payload["status"], payload["progress"]) == (
                expected["status"],
                expected["progress"],
            )
            assert payload["children"] == expected["children"]
        assert payloads[seq - 1]["parentJobId"] == parent["id"]
        assert payloads[seq - 1]["child"] == {
            "id": child["id"],
            "childIndex": child["parent"]["childIndex"],
            "status": status,
            "progress": value,
        }
        assert "child" not in payloads[seq] and "parentJobId" not in payloads[seq]
    assert payloads[12]["status"] == "completed" and payloads[12]["progress"] == 50
    assert [payloads[i]["status"] for i in (18, 19)] == ["cancelled", "cancelled"]
    assert payloads[19]["message"] == "stop" and payloads[18]["progress"] == 10
