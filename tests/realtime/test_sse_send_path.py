"""Both ways a live event reaches a stream, through a real server: the hub's direct write
to the connection (the default, uvicorn's HTTP/1.1 connection), and the ASGI ``send`` of the
stream's own task (``SEENN_SSE_DIRECT_WRITES=false``, as under any other server). Each keeps
the stream ordered, gap-free and resumable."""

from __future__ import annotations

import asyncio
import re
import socket

import httpx
import orjson
import pytest

from tests.support.harness import start_server
from tests.support.helpers import create_job, progress
from tests.support.sse_client import open_sse


def _serving(database_url, workdir, name: str, env: dict[str, str]):
    proc = start_server(database_url, workdir / name, env=env)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def send_only(database_url, workdir):
    """A server whose streams never take the direct write."""
    yield from _serving(
        database_url, workdir, "sse-send-only", {"SEENN_SSE_DIRECT_WRITES": "false"}
    )


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _metrics(c: httpx.AsyncClient) -> str:
    return (await c.get("/metrics")).text


@pytest.mark.parametrize("path", ["direct", "send"])
async def test_many_streams_of_one_user_get_every_event_in_order_and_resume(
    server, send_only, keys, path
) -> None:
    base = server.url if path == "direct" else send_only.url
    user = f"u_path_{path}"
    headers = keys.auth()
    async with httpx.AsyncClient(base_url=base, timeout=30) as root:
        async with httpx.AsyncClient(base_url=f"{base}/v1", headers=headers, timeout=30) as c:
            jobs = [await create_job(c, userId=user) for _ in range(3)]
            before = await _metrics(root)
            async with (
                open_sse(base, {"userId": user}, headers) as a,
                open_sse(base, {"userId": user}, headers) as b,
                open_sse(base, {"userId": user}, headers) as d,
            ):
                streams = (a, b, d)
                starts = [int((await s.next()).id) for s in streams]
                # One write at a time, each read by every stream before the next: a stream
                # then waits for each event (the direct write's case).
                for value in (10, 20):
                    await progress(c, jobs[0]["id"], value)
                    for s in streams:
                        (got,) = await s.take(1)
                        assert got.data["progress"] == value

                # Then a burst: one writer per job, all at once.
                async def writer(job_id: str) -> None:
                    for v in (30, 40, 50):
                        await progress(c, job_id, v)

                await asyncio.gather(*(writer(job["id"]) for job in jobs))
                burst = [await s.take(9) for s in streams]
            after = await _metrics(root)
    for start, got in zip(starts, burst, strict=True):
        ids = [int(m.id) for m in got]
        assert ids == list(range(start + 3, start + 12))  # after the two lockstep events
        per_job = {}
        for m in got:
            per_job.setdefault(m.data["jobId"], []).append(m.data["progress"])
        assert per_job == {job["id"]: [30, 40, 50] for job in jobs}
    assert starts[0] == starts[1] == starts[2]
    live = 3 * 11  # three streams, eleven live events each
    if path == "direct":
        assert _metric(after, "seenn_sse_fanout_seconds_count") > _metric(
            before, "seenn_sse_fanout_seconds_count"
        )
    else:  # every live event went through the stream's own task and ``send``
        queued = _metric(after, "seenn_sse_events_queued_total") - _metric(
            before, "seenn_sse_events_queued_total"
        )
        assert queued >= live
        assert _metric(after, "seenn_sse_fanout_seconds_count") == _metric(
            before, "seenn_sse_fanout_seconds_count"
        )
    # A resume from the middle of the burst gets exactly the rest, then live events.
    middle = burst[0][4]
    async with open_sse(base, {"userId": user}, {**headers, "Last-Event-ID": middle.id}) as s:
        assert (await s.next()).event == "connected"
        rest = await s.take(4)
        assert [m.id for m in rest] == [m.id for m in burst[0][5:]]
        async with httpx.AsyncClient(base_url=f"{base}/v1", headers=headers, timeout=30) as c:
            await progress(c, jobs[1]["id"], 60)
        (live_one,) = await s.take(1)
        assert int(live_one.id) == int(rest[-1].id) + 1 and live_one.data["progress"] == 60


# --- a stream whose connection stops being writable -------------------------------------

_LIVE = re.compile(rb"id: (\d+)\nevent: (job\.[a-z]+)\ndata: ([^\n]*)\n")
_BLOB = "x" * 4000  # a ~4.5 KB event: a few dozen fill a reader's small window
QUEUED_ENOUGH = 80  # events left to the stream's task: more than its 256 KB buffer holds


@pytest.fixture(scope="module")
def patient(database_url, workdir):
    """Direct writes on; a stalled client is not cut while the test writes."""
    env = {"SEENN_SSE_SEND_TIMEOUT_SECONDS": "600"}
    yield from _serving(database_url, workdir, "sse-patient", env)


def _stalled_reader(url: str, key: str, user: str) -> tuple[socket.socket, int]:
    """A client with a phone's small window that reads up to its ``connected`` event (the
    stream's position) and then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)  # liveness only
    sock.connect((host, int(port)))
    sock.sendall(
        f"GET /v1/sse?userId={user} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = b""
    while (found := re.search(rb"id: (\d+)\nevent: connected\n", head)) is None:
        chunk = sock.recv(65536)
        assert chunk, head
        head += chunk
    return sock, int(found.group(1))


def _read_until(sock: socket.socket, last: int) -> list[tuple[int, dict]]:
    """Every job event on the wire until the one with id ``last`` (the chunk-size lines of
    HTTP/1.1 framing sit between messages, never inside one)."""
    buf = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the stream"
        buf += chunk
        events = [(int(m.group(1)), orjson.loads(m.group(3))) for m in _LIVE.finditer(buf)]
        if events and events[-1][0] >= last:
            return events


async def test_a_reader_that_stops_reading_gets_every_event_in_order_once_it_reads(
    patient, keys
) -> None:
    """While the client reads nothing, its connection fills and is no longer writable: the
    hub stops writing to it and leaves each live event to the stream's own task (its buffer,
    then the log once the buffer is full). When the client reads again it gets every event
    since it connected, in order and without a gap, then the live ones."""
    user = "u_path_stalled"
    async with httpx.AsyncClient(base_url=patient.url, timeout=30) as root:
        async with httpx.AsyncClient(
            base_url=f"{patient.url}/v1", headers=keys.auth(), timeout=30
        ) as c:
            job = await create_job(c, userId=user)
            sock, start = await asyncio.to_thread(_stalled_reader, patient.url, keys.public, user)
            try:
                base = await _metrics(root)
                written = 0
                # Write until the hub has left enough events to the stream (bounded: liveness).
                while written < 3000:
                    await progress(c, job["id"], written % 101, metadata={"n": written, "b": _BLOB})
                    written += 1
                    queued = _metric(await _metrics(root), "seenn_sse_events_queued_total")
                    if queued - _metric(base, "seenn_sse_events_queued_total") >= QUEUED_ENOUGH:
                        break
                else:
                    raise AssertionError("the hub kept writing to a client that reads nothing")
                after = await _metrics(root)
                got = await asyncio.to_thread(_read_until, sock, start + written)
                # Reading again, the stream is back to live delivery.
                await progress(c, job["id"], 100, metadata={"n": written})
                (tail,) = [
                    e
                    for e in await asyncio.to_thread(_read_until, sock, start + written + 1)
                    if e[0] == start + written + 1
                ]
            finally:
                sock.close()
    assert [seq for seq, _ in got] == list(range(start + 1, start + written + 1))
    assert [d["metadata"]["n"] for _, d in got] == list(range(written))
    # (metadata merges, so the blob written before stays beside the new ``n``)
    assert tail[1]["metadata"]["n"] == written and tail[1]["progress"] == 100
    # The first events went straight to the connection, before it filled.
    assert _metric(after, "seenn_sse_fanout_seconds_count") > _metric(
        base, "seenn_sse_fanout_seconds_count"
    )
