"""A completion appends its ETA sample without locking its key's statistics; readers apply
the pending samples, a compaction folds them in. Real server, real PostgreSQL, real HTTP:
many completions of one key at once, then exact counts before and after compaction."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import AppKeys


@pytest.fixture
async def wide_client(server, keys: AppKeys):
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers=keys.auth(), timeout=60, limits=limits
    ) as c:
        yield c


async def _compacted(db, app_id: str, key: str) -> None:
    """Wait until no sample of the key is left (compaction runs after each completion)."""
    for _ in range(600):
        left = await db.fetchval(
            "SELECT count(*) FROM eta_samples WHERE app_id = $1 AND eta_key = $2", app_id, key
        )
        if left == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{left} samples of {key} never compacted")


async def test_concurrent_completions_of_one_key_count_exactly_once(
    wide_client, db, keys: AppKeys
) -> None:
    n = 80
    body = {"jobType": "sampled", "userId": "u_samples", "title": "t"}
    created = await asyncio.gather(*(wide_client.post("/jobs", json=body) for _ in range(n)))
    ids = [r.json()["id"] for r in created]
    await asyncio.gather(
        *(wide_client.post(f"/jobs/{i}/progress", json={"progress": 0}) for i in ids)
    )
    done = await asyncio.gather(*(wide_client.post(f"/jobs/{i}/complete", json={}) for i in ids))
    assert {r.status_code for r in done} == {200}
    # Right away: stored statistics plus pending samples count every completion once.
    before = (await wide_client.get("/eta/sampled")).json()
    assert before["count"] == n
    await _compacted(db, keys.app_id, "sampled")
    after = (await wide_client.get("/eta/sampled")).json()
    # Folding the samples into the row changes nothing a reader sees.
    assert after == before
    stored = await db.fetchrow(
        "SELECT count, min_duration, max_duration FROM eta_stats"
        " WHERE app_id = $1 AND eta_key = 'sampled'",
        keys.app_id,
    )
    assert stored["count"] == n
    assert stored["min_duration"] == after["minDuration"]
    assert stored["max_duration"] == after["maxDuration"]
    listed = (await wide_client.get("/eta")).json()
    assert [s["count"] for s in listed["stats"] if s["etaKey"] == "sampled"] == [n]


async def test_reset_removes_pending_samples_too(wide_client, db, keys: AppKeys) -> None:
    body = {"jobType": "reset-sampled", "userId": "u_samples", "title": "t"}
    job = (await wide_client.post("/jobs", json=body)).json()
    assert (await wide_client.post(f"/jobs/{job['id']}/complete", json={})).status_code == 200
    assert (await wide_client.delete("/eta/reset-sampled")).status_code == 200
    assert (await wide_client.get("/eta/reset-sampled")).status_code == 404
    left = await db.fetchval(
        "SELECT count(*) FROM eta_samples WHERE app_id = $1 AND eta_key = 'reset-sampled'",
        keys.app_id,
    )
    assert left == 0


async def test_a_completion_racing_progress_writes_is_sampled_once(
    wide_client, db, keys: AppKeys
) -> None:
    """An optimistic complete that loses a race to a progress write is recomputed: the
    statement it lost with must leave no sample behind."""
    for round_no in range(5):
        key = f"raced-{round_no}"
        body = {"jobType": key, "userId": "u_samples", "title": "t"}
        job = (await wide_client.post("/jobs", json=body)).json()
        writes = [
            wide_client.post(f"/jobs/{job['id']}/progress", json={"progress": p})
            for p in range(1, 30)
        ]
        writes.insert(10, wide_client.post(f"/jobs/{job['id']}/complete", json={}))
        responses = await asyncio.gather(*writes)
        completed = [r for r in responses if r.request.url.path.endswith("/complete")]
        assert completed[0].status_code == 200, completed[0].text
        stats = (await wide_client.get(f"/eta/{key}")).json()
        assert stats["count"] == 1
        await _compacted(db, keys.app_id, key)
        stored = await db.fetchval(
            "SELECT count FROM eta_stats WHERE app_id = $1 AND eta_key = $2", keys.app_id, key
        )
        assert stored == 1
