"""Parent and child jobs over the API: counters, progress, status, cancel cascades."""

import asyncio
from collections import Counter

import httpx
import pytest

from tests.support.helpers import (
    assert_error,
    complete,
    create_child,
    create_job,
    create_parent,
    fail,
    progress,
)


async def post_child(
    client: httpx.AsyncClient, parent_id: str, index: int, user_id: str
) -> httpx.Response:
    """POST a child with ``childIndex`` ``index`` under ``parent_id`` (may be refused)."""
    body = {
        "jobType": "i",
        "userId": user_id,
        "title": "t",
        "parentJobId": parent_id,
        "childIndex": index,
    }
    return await client.post("/jobs", json=body)


async def get(client, job_id):
    response = await client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_parent_starts_with_every_child_pending(client):
    parent = await create_parent(client, 5)
    assert parent["children"] == {
        "total": 5,
        "completed": 0,
        "failed": 0,
        "running": 0,
        "pending": 5,
        "cancelled": 0,
    }
    assert parent["childProgressMode"] == "average"
    assert parent["status"] == "pending" and "parent" not in parent


async def test_child_carries_parent_reference_and_no_children(client):
    parent = await create_parent(client, 2)
    child = await create_child(client, parent, 1)
    assert child["parent"] == {"parentJobId": parent["id"], "childIndex": 1}
    assert "children" not in child and "childProgressMode" not in child


async def test_a_child_expires_with_its_parent_whatever_ttl_it_asks_for(client, db):
    parent = await create_parent(client, 2, ttlSeconds=3600)
    longer = await create_child(client, parent, 0, ttlSeconds=7200)
    default = await create_child(client, parent, 1)  # would be 30 days on its own
    rows = await db.fetch(
        "SELECT id, expires_at FROM jobs WHERE id = ANY($1::text[])",
        [parent["id"], longer["id"], default["id"]],
    )
    expiry = {row["id"]: row["expires_at"] for row in rows}
    assert expiry[longer["id"]] == expiry[parent["id"]] == expiry[default["id"]]


async def test_documented_seventy_percent_example(client):
    parent = await create_parent(client, 5)
    kids = [await create_child(client, parent, i) for i in range(5)]
    for kid in kids[:3]:
        await complete(client, kid["id"])
    await progress(client, kids[3]["id"], 50)
    await fail(client, kids[3]["id"])
    await fail(client, kids[4]["id"])
    state = await get(client, parent["id"])
    assert state["progress"] == 70
    assert state["children"]["completed"] == 3 and state["children"]["failed"] == 2
    assert state["status"] == "completed"


async def test_four_completed_one_failed_is_completed(client):
    parent = await create_parent(client, 5)
    kids = [await create_child(client, parent, i) for i in range(5)]
    await fail(client, kids[2]["id"])
    for i in (0, 1, 3):
        await complete(client, kids[i]["id"])
    assert (await get(client, parent["id"]))["status"] == "running"
    await complete(client, kids[4]["id"])
    state = await get(client, parent["id"])
    assert state["status"] == "completed"
    assert state["completedAt"] and state["progress"] == 80


async def test_all_children_failed_is_failed(client):
    parent = await create_parent(client, 3)
    for i in range(3):
        await fail(client, (await create_child(client, parent, i))["id"])
    state = await get(client, parent["id"])
    assert state["status"] == "failed" and state["children"]["failed"] == 3


async def test_sequential_mode_counts_completed_children(client):
    parent = await create_parent(client, 4, childProgressMode="sequential")
    kids = [await create_child(client, parent, i) for i in range(4)]
    await progress(client, kids[0]["id"], 90)
    assert (await get(client, parent["id"]))["progress"] == 0
    await complete(client, kids[1]["id"])
    assert (await get(client, parent["id"]))["progress"] == 25
    # Cancelled, it keeps counting its way: 1 of 4 completed, whatever the others did.
    cancelled = await client.post(f"/jobs/{parent['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["progress"] == 25 and cancelled.json()["status"] == "cancelled"


async def test_a_cancelled_average_parent_keeps_the_average_of_its_children(client):
    parent = await create_parent(client, 2)
    child = await create_child(client, parent, 0)
    await progress(client, child["id"], 40)
    cancelled = await client.post(f"/jobs/{parent['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["progress"] == 20  # round(40 / 2): the cancelled child keeps 40


async def test_uncreated_children_count_as_pending_zero(client):
    parent = await create_parent(client, 4)
    child = await create_child(client, parent, 0)
    await progress(client, child["id"], 50)
    state = await get(client, parent["id"])
    assert state["status"] == "running" and state["progress"] == 13  # round(50 / 4)
    assert state["children"]["pending"] == 3 and state["children"]["running"] == 1
    assert state["startedAt"]


async def test_get_with_children_orders_by_child_index(client):
    parent = await create_parent(client, 3)
    for i in (2, 0, 1):
        await create_child(client, parent, i, title=f"#{i}")
    await complete(
        client,
        (await client.get(f"/jobs/{parent['id']}/children")).json()["children"][0]["id"],
        result={"url": "u"},
    )
    body = (await client.get(f"/jobs/{parent['id']}/children")).json()
    assert body["parent"]["id"] == parent["id"]
    assert [c["childIndex"] for c in body["children"]] == [0, 1, 2]
    first = body["children"][0]
    assert set(first) == {
        "id",
        "childIndex",
        "title",
        "status",
        "progress",
        "result",
        "createdAt",
        "updatedAt",
        "completedAt",
    }
    assert "completedAt" not in body["children"][1]


async def test_children_of_a_plain_job_is_invalid_parent(client):
    job = await create_job(client)
    error = assert_error(await client.get(f"/jobs/{job['id']}/children"), 400, "INVALID_PARENT")
    assert error["details"] == {"id": job["id"]}


async def test_child_rules(client):
    parent = await create_parent(client, 2)
    plain = await create_job(client)
    for not_a_parent in (plain["id"], "01HXYZ123456789ABCDEFGHJKM"):
        error = assert_error(
            await post_child(client, not_a_parent, 0, parent["userId"]),
            400,
            "INVALID_PARENT",
        )
        assert error["details"] == {"parentJobId": not_a_parent}
        assert error["message"] == f"Parent job {not_a_parent} does not exist or is not a parent"
    error = assert_error(
        await post_child(client, parent["id"], 0, "other-user"),
        400,
        "INVALID_PARENT",
    )
    assert error["details"] == {"parentJobId": parent["id"], "userId": "other-user"}
    assert error["message"] == "A child's userId must equal its parent's"
    error = assert_error(
        await post_child(client, parent["id"], 2, parent["userId"]),
        400,
        "INVALID_CHILD_INDEX",
    )
    assert error["details"] == {"childIndex": 2, "totalChildren": 2}
    first = await create_child(client, parent, 1)
    error = assert_error(
        await post_child(client, parent["id"], 1, parent["userId"]),
        409,
        "DUPLICATE_CHILD_INDEX",
    )
    assert error["details"] == {
        "parentJobId": parent["id"],
        "childIndex": 1,
        "existingJobId": first["id"],
    }
    # A parent that has ended takes no new child.
    cancelled = await client.post(f"/jobs/{parent['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    error = assert_error(
        await post_child(client, parent["id"], 0, parent["userId"]),
        400,
        "INVALID_JOB_STATE",
    )
    assert error["details"] == {"id": parent["id"], "status": "cancelled"}


@pytest.mark.parametrize("action", ["progress", "complete", "fail"])
async def test_parent_state_follows_children_only(client, action):
    parent = await create_parent(client, 2)
    body = {"progress": 5, "error": {"code": "X", "message": "y"}}
    response = await client.post(f"/jobs/{parent['id']}/{action}", json=body)
    error = assert_error(response, 400, "INVALID_JOB_STATE")
    assert error["details"] == {"id": parent["id"], "status": "pending"}


async def test_cancel_parent_cascades_to_unfinished_children(client):
    parent = await create_parent(client, 4)
    kids = [await create_child(client, parent, i) for i in range(3)]
    await complete(client, kids[0]["id"])
    await progress(client, kids[1]["id"], 40)
    response = await client.post(f"/jobs/{parent['id']}/cancel", json={"reason": "user quit"})
    assert response.status_code == 200
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and cancelled["message"] == "user quit"
    assert cancelled["children"]["completed"] == 1
    assert cancelled["children"]["cancelled"] == 2
    assert cancelled["children"]["running"] == 0
    states = {k["id"]: (await get(client, k["id"]))["status"] for k in kids}
    assert states == {
        kids[0]["id"]: "completed",
        kids[1]["id"]: "cancelled",
        kids[2]["id"]: "cancelled",
    }
    assert_error(
        await client.post(f"/jobs/{kids[1]['id']}/progress", json={"progress": 50}),
        400,
        "INVALID_JOB_STATE",
    )
    late = await post_child(client, parent["id"], 3, parent["userId"])
    assert_error(late, 400, "INVALID_JOB_STATE")


async def test_cancel_one_child_updates_parent(client):
    parent = await create_parent(client, 2)
    a = await create_child(client, parent, 0)
    b = await create_child(client, parent, 1)
    await progress(client, a["id"], 30)
    await client.post(f"/jobs/{a['id']}/cancel")
    await complete(client, b["id"])
    state = await get(client, parent["id"])
    assert state["children"]["cancelled"] == 1 and state["status"] == "completed"
    assert state["progress"] == 65  # (30 + 100) / 2


async def test_parent_whose_children_were_all_cancelled_failed(client):
    """CONTRACT: all children terminal and none completed is ``failed``, cancelled or not."""
    parent = await create_parent(client, 2)
    a = await create_child(client, parent, 0)
    b = await create_child(client, parent, 1)
    await progress(client, a["id"], 40)
    for kid in (a, b):
        response = await client.post(f"/jobs/{kid['id']}/cancel")
        assert response.status_code == 200, response.text
    state = await get(client, parent["id"])
    assert state["status"] == "failed"
    assert state["children"]["cancelled"] == 2 and state["completedAt"] is not None
    assert state["progress"] == 20  # (40 + 0) / 2


async def test_a_refused_duplicate_child_writes_nothing(client, db, keys):
    """A retried create of a child whose slot is taken gets 409 and leaves no trace: no
    event in the user's stream, and its ``estimatedDuration`` is not recorded as the key's
    default (that would change the estimate of every later job of the type)."""
    parent = await create_parent(client, 2, userId="u_refused_child")
    child = {"jobType": "refused-kind", "estimatedDuration": 60_000}
    first = await create_child(client, parent, 0, **child)

    async def stream() -> list[tuple[int, str, str]]:
        rows = await db.fetch(
            "SELECT e.seq, e.event, e.job_id FROM events e JOIN event_streams s"
            " USING (stream_id) WHERE s.app_id = $1 AND s.user_id = 'u_refused_child'"
            " ORDER BY e.seq",
            keys.app_id,
        )
        return [(r["seq"], r["event"], r["job_id"]) for r in rows]

    before = await stream()
    assert before == [(1, "job.started", parent["id"]), (2, "job.started", first["id"])]
    retry = {"userId": parent["userId"], "title": "retried", "parentJobId": parent["id"]}
    # The same body (tried without a transaction first), then one with a new duration
    # (which goes straight to the locked path).
    for duration in (60_000, 90_000):
        body = {**child, **retry, "childIndex": 0, "estimatedDuration": duration}
        response = await client.post("/jobs", json=body)
        error = assert_error(response, 409, "DUPLICATE_CHILD_INDEX")
        assert error["details"]["existingJobId"] == first["id"]
        assert await stream() == before
    stats = await client.get("/eta/refused-kind")
    assert stats.status_code == 200, stats.text
    assert stats.json()["defaultDuration"] == 60_000


async def test_stored_counters_equal_a_recount(client, db):
    parent = await create_parent(client, 6)
    kids = [await create_child(client, parent, i) for i in range(6)]
    await progress(client, kids[0]["id"], 10)
    await progress(client, kids[1]["id"], 70)
    await complete(client, kids[2]["id"])
    await fail(client, kids[3]["id"])
    await client.post(f"/jobs/{kids[4]['id']}/cancel")
    row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", parent["id"])
    recount = await db.fetchrow(
        """SELECT count(*) FILTER (WHERE status = 'completed') AS completed,
                  count(*) FILTER (WHERE status = 'failed') AS failed,
                  count(*) FILTER (WHERE status = 'running') AS running,
                  count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
                  sum(CASE WHEN status = 'completed' THEN 100 ELSE progress END) AS psum
           FROM jobs WHERE parent_job_id = $1""",
        parent["id"],
    )
    assert (
        row["completed_children"],
        row["failed_children"],
        row["running_children"],
        row["cancelled_children"],
        row["child_progress_sum"],
    ) == tuple(recount)


@pytest.mark.parametrize("total", [1, 3])
async def test_batch_whose_parent_and_children_share_a_job_type_completes(client, total):
    # createBatch gives the parent and its children one jobType; the last child's completion
    # records two durations, the child's under the type and the parent's under "#parent".
    key = f"shared-{total}"
    parent = await create_job(client, jobType=key, totalChildren=total)
    kids = [await create_child(client, parent, i, jobType=key) for i in range(total)]
    for kid in kids:
        await progress(client, kid["id"], 50)
    for kid in kids:
        done = await complete(client, kid["id"])
        assert done["status"] == "completed"
    state = await get(client, parent["id"])
    assert state["status"] == "completed" and state["progress"] == 100
    assert state["children"]["completed"] == total
    stats = (await client.get(f"/eta/{key}")).json()
    assert stats["count"] == total  # every child
    assert (await client.get(f"/eta/{key}%23parent")).json()["count"] == 1  # the parent


async def test_concurrent_writes_to_children_of_one_parent_all_land(client):
    """Many writes at once to the children of one parent, several to each child: every one
    is answered 200 (a child whose row changed while its write waited for the parent's lock
    was once answered 404), and the parent's progress is exactly the children's average."""
    total = 40
    parent = await create_parent(client, total)
    kids = await asyncio.gather(*(create_child(client, parent, i) for i in range(total)))
    answers: Counter[int] = Counter()

    async def write(kid: dict, value: int) -> None:
        response = await client.post(f"/jobs/{kid['id']}/progress", json={"progress": value})
        answers[response.status_code] += 1

    await asyncio.gather(*(write(kid, v) for v in (5, 10, 15, 20, 25, 30) for kid in kids))
    assert answers == {200: 6 * total}
    children = [await get(client, kid["id"]) for kid in kids]
    state = await get(client, parent["id"])
    points = sum(child["progress"] for child in children)
    assert state["progress"] == (2 * points + total) // (2 * total)  # half up, integers only
    assert state["children"]["running"] == total
