"""Progress writes without a transaction: read the job, then one statement that applies only
to the row version read (and appends its event), committed as it ends. Concurrent writers to
one job must lose nothing: every write lands exactly once, in one order that the job row and
the event stream agree on. Real server, real PostgreSQL, real HTTP."""

from __future__ import annotations

import asyncio

import httpx
import orjson

from tests.conftest import AppKeys
from tests.support.helpers import create_job


async def test_concurrent_progress_on_one_job_loses_no_update(server, keys: AppKeys, db) -> None:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers=keys.auth(), timeout=60, limits=limits
    ) as client:
        job = await create_job(client, userId="u_optimistic")
        writes = 60
        responses = await asyncio.gather(
            *(
                client.post(
                    f"/jobs/{job['id']}/progress",
                    json={"progress": 1 + i % 99, "metadata": {f"k{i}": i}},
                )
                for i in range(writes)
            )
        )
        assert [r.status_code for r in responses] == [200] * writes, [
            r.text for r in responses if r.status_code != 200
        ]
        final = (await client.get(f"/jobs/{job['id']}")).json()
    # Each write merged its own key into what the previous one left: none was lost.
    assert final["metadata"] == {f"k{i}": i for i in range(writes)}
    # Each response is the job as that write left it: the keys it saw grow by one each time.
    seen = sorted(len(r.json()["metadata"]) for r in responses)
    assert seen == list(range(1, writes + 1))
    rows = await db.fetch(
        "SELECT e.seq, e.event, e.payload->'metadata' AS metadata FROM events e"
        " JOIN event_streams s USING (stream_id)"
        " WHERE s.app_id = $1 AND s.user_id = 'u_optimistic' ORDER BY e.seq",
        keys.app_id,
    )
    assert [r["seq"] for r in rows] == list(range(1, writes + 2))
    assert [r["event"] for r in rows] == ["job.started"] + ["job.progress"] * writes
    # The stream's order is the order the writes applied in: each event has one more key.
    sizes = [len(orjson.loads(r["metadata"] or "{}") or {}) for r in rows[1:]]
    assert sizes == list(range(1, writes + 1))


async def test_a_progress_report_does_not_wait_for_a_foreign_key_check_on_its_job(
    client, keys: AppKeys, db
) -> None:
    """Written without a transaction, a progress report of a plain job takes no lock on its
    row but its one ``UPDATE``'s, which changes no key column and so does not conflict with
    the ``FOR KEY SHARE`` lock that a foreign-key check takes on the job (a Live Activity or
    push delivery row inserted for it by a transaction that has not committed yet). The
    locked path's ``SELECT ... FOR UPDATE`` would wait for that transaction."""
    job = await create_job(client, userId="u_key_share")
    async with db.transaction():
        await db.execute("SELECT 1 FROM jobs WHERE id = $1 FOR KEY SHARE", job["id"])
        holder = await db.fetchval("SELECT pg_backend_pid()")
        write = asyncio.create_task(
            client.post(f"/jobs/{job['id']}/progress", json={"progress": 40})
        )
        waited = False
        while not write.done() and not waited:  # until answered, or seen waiting for us
            waited = await db.fetchval(
                "SELECT count(*) > 0 FROM pg_stat_activity"
                " WHERE $1::int = ANY(pg_blocking_pids(pid))",
                holder,
            )
            await asyncio.wait([write], timeout=0.01)
    response = await write
    assert not waited, "the progress report waited for the key-share lock"
    assert response.status_code == 200, response.text
    assert response.json()["progress"] == 40
