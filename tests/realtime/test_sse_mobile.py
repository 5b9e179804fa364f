"""The stream as the React Native SDK reads it on Android: per read, dropping split events.

Real server processes and PostgreSQL; the client is ``tests/support/rn_client.py`` (the SDK's own
parser, fed the body in the pieces Android hands it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AppKeys
from tests.support.harness import ServerProcess, running_server
from tests.support.helpers import complete, create_child, create_job, create_parent, fail, progress
from tests.support.rn_client import Connection, PieceParser, RnClient, split_reads

SMALL_READ = 1400


@pytest.fixture(scope="module")
def small_read_server(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    """A server told its clients read 1,400 bytes at a time (no message is larger)."""
    env = {"SEENN_SSE_MAX_EVENT_BYTES": str(SMALL_READ)}
    with running_server(database_url, workdir / "logs-small-read", env=env) as server:
        yield server


def big_result(n: int) -> dict[str, Any]:
    """A 9.6 KB result, as the one that never reached the Android client."""
    return {
        "type": "video",
        "url": f"https://cdn.example.com/v/{n}.mp4",
        "data": {"frames": [f"frame-{n}-{i:05d}" for i in range(600)]},
    }


async def last_seq(db: Any, keys: AppKeys, user: str) -> int:
    return await db.fetchval(
        "SELECT last_seq FROM event_streams WHERE app_id=$1 AND mode='test' AND user_id=$2",
        keys.app_id,
        user,
    )


async def caught_up(conn: Connection, db: Any, keys: AppKeys, user: str) -> None:
    """Until the server has written every event of the user's log to this connection."""
    seq = await last_seq(db, keys, user)
    await conn.wait_for(lambda c: c.has_id(seq))


def assert_nothing_lost(conn: Connection) -> None:
    """The SDK dispatched exactly what the server sent, message for message."""
    sent = conn.reference()
    assert len(conn.dispatched) == len(sent), (len(conn.dispatched), len(sent))
    assert conn.dispatched == sent
    assert len(conn.chunk_sizes) == len(sent)  # one message per chunk (network write)
    assert max(conn.chunk_sizes) <= conn.client.read_size  # and each fits one read


async def assert_client_has_server_state(
    client: httpx.AsyncClient, rn: RnClient, user: str
) -> None:
    jobs: list[dict[str, Any]] = []
    params = {"userId": user, "limit": "100"}
    while True:
        page = (await client.get("/jobs", params=params)).json()
        jobs += page["jobs"]
        if "nextCursor" not in page:
            break
        params["cursor"] = page["nextCursor"]
    assert jobs
    for job in jobs:
        mine = rn.jobs.get(job["id"])
        assert mine is not None, f"the app never heard of {job['id']} ({job['status']})"
        for name in ("status", "progress", "updatedAt"):
            assert mine[name] == job[name], (name, mine, job)
        if "result" in job:
            assert mine["result"]["url"] == job["result"]["url"]
            assert mine["result"]["type"] == job["result"]["type"]
            if "result.data" not in mine.get("omitted", ()):
                assert mine["result"] == job["result"]


@pytest.mark.parametrize("read_size", [8192, SMALL_READ], ids=["8KiB", "1400B"])
async def test_a_mobile_client_gets_every_event_through_connects_resumes_bursts_and_large_results(
    request: pytest.FixtureRequest,
    keys: AppKeys,
    client: httpx.AsyncClient,
    db: Any,
    read_size: int,
) -> None:
    server = request.getfixturevalue("server" if read_size == 8192 else "small_read_server")
    user = f"u_mobile_{read_size}"
    meta = {"notes": "m" * 2500}  # ~3 KB events: several would share one 8 KiB read
    singles = [await create_job(client, userId=user, metadata=meta) for _ in range(60)]
    parent = await create_parent(client, 40, userId=user)
    children = [await create_child(client, parent, i) for i in range(40)]
    early = [await create_job(client, userId=user) for _ in range(5)]
    for n, job in enumerate(early):  # ended before the app ever connected
        await complete(client, job["id"], result=big_result(n))
    marker = await create_job(client, userId=user, title="marker")

    rn = RnClient(server.url, keys.public, user, read_size)

    # 1. A fresh connect: connected, then one job.sync per job, all whole.
    conn = await rn.connect(resume=False)
    await progress(client, marker["id"], 1)  # a live event after the sync
    await caught_up(conn, db, keys, user)
    syncs = [m for m in conn.dispatched if m["event"] == "job.sync"]
    assert syncs[0]["data"]["jobId"] == parent["id"]  # parents first
    assert len(syncs) == 60 + 1 + 40 + 5 + 1
    assert_nothing_lost(conn)

    # 2. A burst of live events, large results among them.
    await asyncio.gather(
        *(progress(client, c["id"], 50) for c in children),
        *(complete(client, j["id"], result=big_result(i)) for i, j in enumerate(singles[:10])),
    )
    await caught_up(conn, db, keys, user)
    assert_nothing_lost(conn)
    await conn.close()

    # 3. Away, then a resume from the SDK's own lastEventId: the missed events, replayed.
    for c in children[:20]:
        await complete(client, c["id"], result=big_result(200))
    for j in singles[10:30]:
        await progress(client, j["id"], 70, message="almost")
    conn = await rn.connect(resume=True)
    await caught_up(conn, db, keys, user)
    replayed = [m for m in conn.dispatched if m.get("id") and m["event"] != "connected"]
    assert len(replayed) >= 60
    assert_nothing_lost(conn)
    await conn.close()

    # 4. The foreground pattern: jobs end while away, the app reconnects without an id.
    for j in singles[30:40]:
        await complete(client, j["id"], result=big_result(300))
    for j in singles[40:45]:
        await fail(client, j["id"], error={"code": "E", "message": "no", "details": meta})
    conn = await rn.connect(resume=False)
    await progress(client, marker["id"], 2)
    await caught_up(conn, db, keys, user)
    assert_nothing_lost(conn)
    synced = {m["data"]["jobId"] for m in conn.dispatched if m["event"] == "job.sync"}
    assert {j["id"] for j in singles[30:45]} <= synced  # ended while away: still synced
    await conn.close()

    await assert_client_has_server_state(client, rn, user)


def test_the_model_client_loses_an_event_split_across_reads() -> None:
    """The test client is as strict as the SDK: two messages in one chunk larger than a
    read lose the one that straddles the read boundary, though its id still counts."""
    first = b"id: 1\nevent: job.progress\ndata: {" + b'"a":"' + b"x" * 5000 + b'"}\n\n'
    second = b"id: 2\nevent: job.progress\ndata: {" + b'"b":"' + b"y" * 5000 + b'"}\n\n'
    parser = PieceParser()
    for piece in split_reads(first + second, 8192):
        parser.parse(piece.decode())
    assert [m["id"] for m in parser.dispatched] == ["1"]
    assert parser.last_event_id == "2"
    whole = PieceParser()
    for chunk in (first, second):  # one message per chunk: both arrive
        for piece in split_reads(chunk, 8192):
            whole.parse(piece.decode())
    assert [m["id"] for m in whole.dispatched] == ["1", "2"]
