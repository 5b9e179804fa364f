"""Two server processes through a real PgBouncer in transaction pooling mode (Debian's
``pgbouncer``): writes, idempotent retries and reads work through it, and realtime delivery
across the processes works with the fallback poll switched off, so it can only come from
``LISTEN`` on ``SEENN_LISTEN_DATABASE_URL`` (the direct URL; a LISTEN through a
transaction pooler would lose its notifications)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AppKeys
from tests.support.harness import ServerProcess, start_server
from tests.support.helpers import create_child, create_job, create_parent
from tests.support.pgbouncer import pgbouncer_binary, running_pgbouncer
from tests.support.sse_client import open_sse

pytestmark = pytest.mark.skipif(pgbouncer_binary() is None, reason="pgbouncer not installed")


@pytest.fixture(scope="module")
def pooled(database_url: str, workdir: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with running_pgbouncer(database_url, pool_size=4) as through:
        env = {
            "SEENN_LISTEN_DATABASE_URL": database_url,
            "SEENN_DB_PREPARED_STATEMENTS": "false",
            "SEENN_SSE_POLL_INTERVAL_SECONDS": "3600",
        }
        servers = [start_server(through, workdir / f"pgbouncer-{i}", env=env) for i in range(2)]
        try:
            yield servers[0], servers[1]
        finally:
            for server in servers:
                server.stop()


async def test_writes_reads_and_realtime_through_pgbouncer_in_transaction_mode(
    pooled: tuple[ServerProcess, ServerProcess], keys: AppKeys
) -> None:
    writer, reader = pooled
    async with (
        httpx.AsyncClient(base_url=f"{writer.url}/v1", headers=keys.auth(), timeout=60) as client,
        open_sse(reader.url, {"userId": "u_bouncer"}, keys.auth(keys.public)) as stream,
    ):
        assert (await stream.next()).event == "connected"
        parent = await create_parent(client, 20, userId="u_bouncer")
        children = await asyncio.gather(*(create_child(client, parent, i) for i in range(20)))
        # Concurrent writes (one parent row, one event stream) over 4 server connections.
        for batch in (
            [(f"/jobs/{c['id']}/progress", {"progress": 50}) for c in children],
            [(f"/jobs/{c['id']}/complete", {}) for c in children[:10]],
        ):
            responses = await asyncio.gather(*(client.post(p, json=b) for p, b in batch))
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        final = (await client.get(f"/jobs/{parent['id']}")).json()
        assert final["children"]["completed"] == 10 and final["status"] == "running"
        listed = (await client.get("/jobs", params={"userId": "u_bouncer"})).json()["jobs"]
        assert len(listed) == 20  # a page of the 21 jobs
        # An idempotent retry through the pooler replays the first response.
        headers = {"Idempotency-Key": "bouncer-1"}
        body = {"jobType": "t", "userId": "u_bouncer", "title": "once"}
        first = await client.post("/jobs", json=body, headers=headers)
        again = await client.post("/jobs", json=body, headers=headers)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        # Every event written through `writer` reaches the subscriber on `reader`, in order.
        plain = await create_job(client, userId="u_bouncer")
        events = []
        while not events or events[-1].data["jobId"] != plain["id"]:
            events += await stream.take(1)
    assert [int(m.id) for m in events] == list(range(1, len(events) + 1))
    assert sum(m.event == "job.completed" for m in events) == 10
    assert sum(m.event == "job.progress" for m in events) == 20
