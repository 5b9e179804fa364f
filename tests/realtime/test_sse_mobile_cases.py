"""What a mobile client sees in each case of the stream: oversized events, a fresh connect
after jobs ended, job.sync order under its limit, replaced streams, the retry hint, and a
client that stops reading. Real server processes and PostgreSQL over real HTTP."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AppKeys
from tests.support.harness import ServerProcess, running_server
from tests.support.helpers import complete, create_child, create_job, create_parent, fail, progress
from tests.support.sse_client import open_sse

MAX_EVENT = 7680  # the default SEENN_SSE_MAX_EVENT_BYTES


def message_size(event: str, event_id: str | None, data: Any) -> int:
    import orjson

    head = f"id: {event_id}\n" if event_id is not None else ""
    return len(f"{head}event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")


async def test_an_oversized_event_leaves_out_the_bulky_parts_and_says_which(
    server: ServerProcess, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    user = "u_big"
    result = {"type": "video", "url": "https://cdn.example.com/a.mp4", "data": {"x": "d" * 9600}}
    meta = {"m": "m" * 3000}
    done = await create_job(client, userId=user, metadata=meta)
    broken = await create_job(client, userId=user, metadata=meta)
    small = await create_job(client, userId=user)
    async with open_sse(server.url, {"userId": user}, keys.auth(keys.public)) as s:
        assert (await s.next()).event == "connected"
        await complete(client, done["id"], result=result)
        await fail(
            client,
            broken["id"],
            error={"code": "E", "message": "no", "details": {"d": "e" * 9000}},
        )
        await progress(client, small["id"], 5)
        completed, failed, plain = await s.take(3)
    assert completed.data["omitted"] == ["result.data"]
    assert completed.data["result"] == {"type": "video", "url": result["url"]}
    assert completed.data["metadata"] == meta  # it fits once result.data is out
    assert failed.data["omitted"] == ["metadata", "error.details"]
    assert failed.data["error"] == {"code": "E", "message": "no"}
    assert "omitted" not in plain.data
    for m in (completed, failed, plain):
        assert message_size(m.event, m.id, m.data) <= MAX_EVENT
    # The REST job still has everything.
    full = (await client.get(f"/jobs/{done['id']}")).json()
    assert full["result"] == result and full["metadata"] == meta


async def test_a_fresh_connect_syncs_jobs_that_ended_within_the_window(
    server: ServerProcess, keys: AppKeys, client: httpx.AsyncClient, db: Any
) -> None:
    user = "u_away"
    running = await create_job(client, userId=user)
    recent = await create_job(client, userId=user)
    old = await create_job(client, userId=user)
    await complete(client, recent["id"], result={"url": "https://x/1"})
    await complete(client, old["id"])
    # Ended two days ago: outside the default window (the 24 h event retention).
    await db.execute(
        "UPDATE jobs SET completed_at = now() - interval '2 days' WHERE id = $1", old["id"]
    )
    async with open_sse(server.url, {"userId": user}, keys.auth(keys.public)) as s:
        assert (await s.next()).event == "connected"
        syncs = [await s.next(), await s.next()]
        await progress(client, running["id"], 3)
        live = await s.next()
    assert [m.event for m in syncs] == ["job.sync", "job.sync"]
    assert [(m.data["jobId"], m.data["status"]) for m in syncs] == [
        (running["id"], running["status"]),
        (recent["id"], "completed"),
    ]
    assert syncs[1].data["result"] == {"url": "https://x/1"}
    assert (live.event, live.data["jobId"]) == ("job.progress", running["id"])


@pytest.fixture(scope="module")
def small_sync_server(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    env = {
        "SEENN_SSE_SYNC_LIMIT": "5",
        "SEENN_SSE_MAX_CONNECTIONS_PER_USER": "2",
        "SEENN_SSE_HEARTBEAT_SECONDS": "0.2",
    }
    with running_server(database_url, workdir / "logs-small-sync", env=env) as server:
        yield server


async def _syncs(url: str, params: dict[str, str], keys: AppKeys) -> list[str]:
    """The job.sync of a connect: a stream beats only once its sync is out, so the first
    heartbeat marks the end."""
    async with open_sse(url, params, keys.auth(keys.public)) as s:
        assert (await s.next()).event == "connected"
        out = []
        while (m := await s.next(skip=())).event != "heartbeat":
            assert m.event == "job.sync", m
            out.append(m.data["jobId"])
        return out


async def test_job_sync_puts_the_named_job_and_every_parent_first_whatever_the_limit(
    small_sync_server: ServerProcess, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    user = "u_parents"
    first_parent = await create_parent(client, 3, userId=user)
    children = [await create_child(client, first_parent, i) for i in range(3)]
    parent = await create_parent(client, 12, userId=user)
    kids = [await create_child(client, parent, i) for i in range(12)]
    loose = await create_job(client, userId=user)
    # The limit is 5: both parents, then the newest three others, in creation order.
    got = await _syncs(small_sync_server.url, {"userId": user}, keys)
    assert got == [first_parent["id"], parent["id"], *[k["id"] for k in kids[-2:]], loose["id"]]
    # Narrowed to the parent: the parent first, then its newest children.
    got = await _syncs(small_sync_server.url, {"userId": user, "jobId": parent["id"]}, keys)
    assert got == [parent["id"], *[k["id"] for k in kids[-4:]]]
    # Narrowed to a child: that child, even though it ended.
    await complete(client, children[0]["id"])
    got = await _syncs(small_sync_server.url, {"userId": user, "jobId": children[0]["id"]}, keys)
    assert got == [children[0]["id"]]


async def test_a_new_stream_over_the_user_cap_replaces_the_oldest(
    small_sync_server: ServerProcess, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    user = "u_cap"
    params = {"userId": user}
    auth = keys.auth(keys.public)
    async with open_sse(small_sync_server.url, params, auth) as first:
        assert (await first.next()).event == "connected"
        async with open_sse(small_sync_server.url, params, auth) as second:
            assert (await second.next()).event == "connected"
            async with open_sse(small_sync_server.url, params, auth) as third:  # 200, not 429
                assert (await third.next()).event == "connected"
                idle = await first.next()
                assert idle.event == "connection.idle" and idle.id is None
                assert idle.data["reason"] == "replaced" and idle.data["idleTime"] >= 0
                assert await first.next() is None  # then closed
                job = await create_job(client, userId=user)
                for s in (second, third):
                    (m,) = await s.take(1)
                    assert m.data["jobId"] == job["id"]


async def test_connect_sends_a_retry_hint_in_the_first_write(
    server: ServerProcess, keys: AppKeys
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        params = {"userId": "u_retry"}
        async with c.stream("GET", "/v1/sse", params=params, headers=keys.auth()) as r:
            first = b""
            async for chunk in r.aiter_raw():
                first += chunk
                if b"\n\n" in first:
                    break
    assert re.match(rb"retry: \d+\nid: \d+\nevent: connected\ndata: \{", first), first


# --- a client that stops reading -------------------------------------------------------

EVENTS = 10_000
READERS = 10
RSS_BOUND_MB = 96  # growth of the server process while ten clients stall on big replays


@pytest.fixture(scope="module")
def stall_server(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    env = {"SEENN_SSE_SEND_TIMEOUT_SECONDS": "3"}
    with running_server(database_url, workdir / "logs-stall", env=env) as server:
        yield server


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def stalled_client(url: str, key: str, user: str) -> socket.socket:
    """A client that asks for the whole replay and then reads nothing at all."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a phone's small window
    sock.connect((host, int(port)))
    sock.sendall(
        f"GET /v1/sse?userId={user}&lastEventId=1 HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    return sock


async def open_streams(url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(f"{url}/metrics")).text
    match = re.search(r"^seenn_sse_connections (\S+)$", text, re.M)
    assert match, "no seenn_sse_connections gauge"
    return float(match.group(1))


async def test_clients_that_stop_reading_are_cut_and_memory_stays_bounded(
    stall_server: ServerProcess, keys: AppKeys, client: httpx.AsyncClient, db: Any
) -> None:
    """Ten clients resume 10,000 large events (about 13 KB each in the log, 6.5 KB on the
    wire) and read nothing. Built in memory, each replay would be about 65 MB; paged as the
    client reads, the server process grows by less than ``RSS_BOUND_MB`` (its peak RSS from
    /proc, against its RSS before), and after the send timeout every stream is cut."""
    user = "u_stall"
    job = await create_job(client, userId=user)  # event 1, and the user's stream
    sid = await db.fetchval(
        "SELECT stream_id FROM event_streams WHERE app_id=$1 AND mode='test' AND user_id=$2",
        keys.app_id,
        user,
    )
    async with db.transaction():
        await db.execute(
            """
            INSERT INTO events (stream_id, seq, job_id, event, payload, created_at)
            SELECT $1, g, $2::text, 'job.progress', jsonb_build_object(
                'id', $2::text, 'jobId', $2::text, 'status', 'running', 'progress', g % 100,
                'metadata', jsonb_build_object('blob', repeat(md5(g::text), 200)),
                'result', jsonb_build_object('url', 'https://x/' || g,
                                             'data', jsonb_build_object('d', repeat('r', 7000)))),
                now()
            FROM generate_series(2, $3::int + 1) AS g
            """,
            sid,
            job["id"],
            EVENTS,
        )
        await db.execute(
            "UPDATE event_streams SET last_seq = $2 WHERE stream_id = $1", sid, EVENTS + 1
        )
    pid = stall_server.process.pid
    before = rss_kb(pid)
    socks = [stalled_client(stall_server.url, keys.public, user) for _ in range(READERS)]
    try:
        peak = before
        deadline = time.monotonic() + 120  # liveness only
        opened = False
        while time.monotonic() < deadline:
            peak = max(peak, rss_kb(pid))
            streams = await open_streams(stall_server.url)
            opened = opened or streams >= READERS
            if opened and streams == 0:
                break
            await asyncio.sleep(0.1)
        assert opened and await open_streams(stall_server.url) == 0, "stalled streams not cut"
        peak = max(peak, rss_kb(pid, "VmHWM"))
        growth_mb = (peak - before) / 1024
        print(f"server RSS {before / 1024:.0f} MB, peak growth {growth_mb:.1f} MB")
        assert growth_mb < RSS_BOUND_MB, f"server grew by {growth_mb:.0f} MB"
    finally:
        for sock in socks:
            sock.close()

    # A client that reads gets the whole replay, in order, each event inside the bound.
    headers = {**keys.auth(keys.public), "Last-Event-ID": "1"}
    async with open_sse(stall_server.url, {"userId": user}, headers) as s:
        got = await s.take(EVENTS, wait=30)
    assert [int(m.id) for m in got] == list(range(2, EVENTS + 2))
    assert all(m.data["omitted"] == ["result.data"] for m in got)
    assert all(message_size(m.event, m.id, m.data) <= MAX_EVENT for m in got)


@pytest.fixture(scope="module")
def small_buffer_server(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    env = {"SEENN_SSE_CLIENT_BUFFER_BYTES": "8192"}  # a handful of events
    with running_server(database_url, workdir / "logs-small-buffer", env=env) as server:
        yield server


async def test_cancelling_a_big_parent_reaches_a_client_whose_buffer_it_overflows(
    small_buffer_server: ServerProcess, keys: AppKeys, client: httpx.AsyncClient, db: Any
) -> None:
    """One commit with far more events than the stream's byte-bounded buffer holds: the
    stream is not dropped, it reads the overflow from the log and then goes on live."""
    user = "u_cancel"
    parent = await create_parent(client, 300, userId=user)
    children = await asyncio.gather(*(create_child(client, parent, i) for i in range(300)))
    async with open_sse(small_buffer_server.url, {"userId": user}, keys.auth(keys.public)) as s:
        connected = await s.next()
        assert connected.event == "connected"
        response = await client.post(f"/jobs/{parent['id']}/cancel", json={})
        assert response.status_code == 200, response.text
        last = await db.fetchval(
            "SELECT last_seq FROM event_streams WHERE app_id=$1 AND mode='test' AND user_id=$2",
            keys.app_id,
            user,
        )
        got = await s.take(last - int(connected.id))
        assert [int(m.id) for m in got] == list(range(int(connected.id) + 1, last + 1))
        cancelled = {m.data["jobId"] for m in got if m.event == "job.cancelled"}
        assert cancelled == {parent["id"], *(c["id"] for c in children)}
        sentinel = await create_job(client, userId=user)  # the same stream goes on live
        (live,) = await s.take(1)
        assert (live.event, live.data["jobId"], int(live.id)) == (
            "job.started",
            sentinel["id"],
            last + 1,
        )
