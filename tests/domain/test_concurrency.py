"""Many requests at once against one server, then an exact check."""

import asyncio

import httpx
import pytest

from tests.support.helpers import create_parent
from tests.support.oracle import parent_state


@pytest.fixture
async def wide_client(server, keys):
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers=keys.auth(), timeout=60, limits=limits
    ) as c:
        yield c


async def test_create_batch_of_1000_children_at_once(wide_client):
    """What the Node SDK's createBatch does: one parent, then every child POST in parallel."""
    parent = await create_parent(wide_client, 1000, userId="batch-user")
    responses = await asyncio.gather(
        *[
            wide_client.post(
                "/jobs",
                json={
                    "jobType": "image",
                    "userId": "batch-user",
                    "title": f"#{i}",
                    "parentJobId": parent["id"],
                    "childIndex": i,
                },
            )
            for i in range(1000)
        ]
    )
    assert [r.status_code for r in responses] == [201] * 1000, {
        r.status_code: r.text for r in responses if r.status_code != 201
    }
    assert len({r.json()["id"] for r in responses}) == 1000
    listed = (await wide_client.get(f"/jobs/{parent['id']}/children")).json()
    assert [c["childIndex"] for c in listed["children"]] == list(range(1000))
    assert listed["parent"]["children"]["pending"] == 1000


async def test_hundreds_of_children_written_concurrently_stay_exact(wide_client, db):
    total = 250
    parent = await create_parent(wide_client, total, userId="busy-user")
    children = [
        r.json()
        for r in await asyncio.gather(
            *[
                wide_client.post(
                    "/jobs",
                    json={
                        "jobType": "image",
                        "userId": "busy-user",
                        "title": f"#{i}",
                        "parentJobId": parent["id"],
                        "childIndex": i,
                    },
                )
                for i in range(total)
            ]
        )
    ]

    async def drive(i: int, child: dict) -> tuple[str, int]:
        """Each child makes a few progress updates, then completes, fails or stays running."""
        job_id = child["id"]
        last = 0
        for step in (10, 35, 60 + i % 30):
            r = await wide_client.post(f"/jobs/{job_id}/progress", json={"progress": step})
            assert r.status_code == 200, r.text
            last = step
        if i % 5 == 0:
            r = await wide_client.post(
                f"/jobs/{job_id}/fail", json={"error": {"code": "X", "message": "m"}}
            )
            assert r.status_code == 200, r.text
            return "failed", last
        if i % 5 == 1:
            return "running", last
        r = await wide_client.post(f"/jobs/{job_id}/complete", json={})
        assert r.status_code == 200, r.text
        return "completed", 100

    finals = await asyncio.gather(*[drive(i, c) for i, c in enumerate(children)])

    expected = parent_state("average", total, finals)
    state = (await wide_client.get(f"/jobs/{parent['id']}")).json()
    assert state["children"] == expected["children"]
    assert state["children"]["cancelled"] == 0 and state["children"]["pending"] == 0
    assert (state["progress"], state["status"]) == (expected["progress"], "running")
    assert expected["status"] == "running"
    recount = await db.fetchval(
        "SELECT sum(CASE WHEN status = 'completed' THEN 100 ELSE progress END)"
        " FROM jobs WHERE parent_job_id = $1",
        parent["id"],
    )
    stored = await db.fetchval("SELECT child_progress_sum FROM jobs WHERE id = $1", parent["id"])
    assert stored == recount == sum(100 if s == "completed" else p for s, p in finals)


async def test_a_batch_sharing_one_job_type_completes_concurrently_with_exact_eta_counts(
    wide_client,
):
    """createBatch as the SDK sends it (parent and children share the jobType; the parent's
    ETA key is the type's plus "#parent"), then every child completes at once: the parent
    completes, the statistics count every child and the parent exactly once."""
    total, key = 200, "shared-batch-concurrent"
    parent = (
        await wide_client.post(
            "/jobs",
            json={"jobType": key, "userId": "sb-user", "title": "batch", "totalChildren": total},
        )
    ).json()

    async def child(i: int) -> str:
        body = {
            "jobType": key,
            "userId": "sb-user",
            "title": f"#{i}",
            "parentJobId": parent["id"],
            "childIndex": i,
        }
        r = await wide_client.post("/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    ids = await asyncio.gather(*[child(i) for i in range(total)])
    done = await asyncio.gather(*[wide_client.post(f"/jobs/{i}/complete", json={}) for i in ids])
    assert [r.status_code for r in done] == [200] * total, {
        r.status_code: r.text for r in done if r.status_code != 200
    }
    state = (await wide_client.get(f"/jobs/{parent['id']}")).json()
    assert (state["status"], state["progress"], state["children"]["completed"]) == (
        "completed",
        100,
        total,
    )
    stats = (await wide_client.get(f"/eta/{key}")).json()
    assert stats["count"] == total
    assert (await wide_client.get(f"/eta/{key}%23parent")).json()["count"] == 1
