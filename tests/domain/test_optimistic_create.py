"""Creates without a transaction: a child's insert and its event are one statement that
applies only while its parent is live and unfinished. Races against a cancel of the parent
and against other creates of the same slot must leave exactly what a serial order would:
real server, real PostgreSQL, real HTTP, then an exact check of rows and events."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import AppKeys
from tests.support.helpers import create_parent


@pytest.fixture
async def wide_client(server, keys: AppKeys):
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers=keys.auth(), timeout=60, limits=limits
    ) as c:
        yield c


def _child(parent: dict, index: int) -> dict:
    return {
        "jobType": "race-child",
        "userId": parent["userId"],
        "title": f"child {index}",
        "parentJobId": parent["id"],
        "childIndex": index,
    }


async def test_creates_racing_a_cancel_of_their_parent_leave_no_child_behind(
    wide_client, db, keys: AppKeys
) -> None:
    total = 120
    parent = await create_parent(wide_client, total, userId="u_create_race")

    async def create(i: int) -> httpx.Response:
        return await wide_client.post("/jobs", json=_child(parent, i))

    async def cancel() -> httpx.Response:
        await asyncio.sleep(0)  # let some creates start first
        return await wide_client.post(f"/jobs/{parent['id']}/cancel")

    *creates, cancelled = await asyncio.gather(*(create(i) for i in range(total)), cancel())
    assert cancelled.status_code == 200, cancelled.text
    codes = {r.status_code for r in creates}
    assert codes <= {201, 400}, [r.text for r in creates if r.status_code not in (201, 400)]
    refused = [r.json()["error"]["code"] for r in creates if r.status_code == 400]
    assert set(refused) <= {"INVALID_JOB_STATE"}
    created = {r.json()["id"] for r in creates if r.status_code == 201}
    rows = await db.fetch("SELECT id, status FROM jobs WHERE parent_job_id = $1", parent["id"])
    # Every acknowledged child exists and none else; the cancel missed none of them.
    assert {r["id"] for r in rows} == created
    assert {r["status"] for r in rows} <= {"cancelled"}
    stored = (await wide_client.get(f"/jobs/{parent['id']}")).json()
    assert stored["status"] == "cancelled"
    assert stored["children"]["cancelled"] == len(created)
    counters = await db.fetchrow(
        "SELECT cancelled_children, completed_children, running_children, failed_children"
        " FROM jobs WHERE id = $1",
        parent["id"],
    )
    assert counters["cancelled_children"] == len(created)
    assert counters["completed_children"] == counters["running_children"] == 0
    # The user's stream is gap-free and holds one job.started per acknowledged child and one
    # job.cancelled per cancelled child.
    events = await db.fetch(
        "SELECT e.seq, e.event, e.job_id FROM events e JOIN event_streams s USING (stream_id)"
        " WHERE s.app_id = $1 AND s.user_id = 'u_create_race' ORDER BY e.seq",
        keys.app_id,
    )
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    started = [e["job_id"] for e in events if e["event"] == "job.started"]
    assert sorted(started) == sorted([parent["id"], *created])
    ended = {e["job_id"] for e in events if e["event"] == "job.cancelled"}
    assert ended == {parent["id"], *created}


async def test_concurrent_creates_of_one_slot_make_exactly_one_child(wide_client, db) -> None:
    parent = await create_parent(wide_client, 3, userId="u_slot_race")
    responses = await asyncio.gather(
        *(wide_client.post("/jobs", json=_child(parent, 1)) for _ in range(40))
    )
    ok = [r for r in responses if r.status_code == 201]
    assert len(ok) == 1, [r.text for r in responses]
    others = [r.json() for r in responses if r.status_code != 201]
    assert {r["error"]["code"] for r in others} == {"DUPLICATE_CHILD_INDEX"}
    assert {r["error"]["details"]["existingJobId"] for r in others} == {ok[0].json()["id"]}
    rows = await db.fetch("SELECT id FROM jobs WHERE parent_job_id = $1", parent["id"])
    assert [r["id"] for r in rows] == [ok[0].json()["id"]]
    started = await db.fetchval(
        "SELECT count(*) FROM events WHERE job_id = $1 AND event = 'job.started'",
        ok[0].json()["id"],
    )
    assert started == 1


async def test_a_create_that_records_a_new_default_duration_still_works(wide_client) -> None:
    """``estimatedDuration`` changes the key's default: the locked path records it."""
    body = {"jobType": "with-default", "userId": "u_default", "title": "t"}
    first = await wide_client.post("/jobs", json={**body, "estimatedDuration": 5000})
    again = await wide_client.post("/jobs", json={**body, "estimatedDuration": 5000})
    plain = await wide_client.post("/jobs", json=body)
    assert [r.status_code for r in (first, again, plain)] == [201, 201, 201]
    stats = (await wide_client.get("/eta/with-default")).json()
    assert stats["defaultDuration"] == 5000
    assert "estimatedCompletionAt" in plain.json()
