"""Connecting writes nothing: ``GET /v1/sse`` for a user who never wrote creates no stream
row; the user's first write creates it, and a waiting subscriber gets every event from the
first, in order. Real server, real PostgreSQL, real HTTP."""

from __future__ import annotations

from tests.support.helpers import create_job, progress
from tests.support.sse_client import open_sse


async def _streams(db, app_id: str, user: str) -> list[tuple[int, int]]:
    rows = await db.fetch(
        "SELECT stream_id, last_seq FROM event_streams WHERE app_id=$1 AND user_id=$2",
        app_id,
        user,
    )
    return [(r["stream_id"], r["last_seq"]) for r in rows]


async def test_connecting_inserts_no_stream_row_and_the_first_write_creates_it(
    server, keys, client, db
) -> None:
    user = "u_reader_only"
    for headers in (keys.auth(keys.public), {**keys.auth(), "Last-Event-ID": "7"}):
        async with open_sse(server.url, {"userId": user}, headers) as s:
            hello = await s.next()
            assert hello.event == "connected" and hello.id == "0"
            assert await _streams(db, keys.app_id, user) == []
    assert await _streams(db, keys.app_id, user) == []

    # A stream with no writes replays nothing: the first message after `connected` is the
    # user's first event (id 1), even for a client that claims to have seen id 7.
    headers = {**keys.auth(keys.public), "Last-Event-ID": "7"}
    async with open_sse(server.url, {"userId": user}, headers) as s:
        assert (await s.next()).event == "connected"
        job = await create_job(client, userId=user)
        first = await s.next()
        assert (first.event, first.id, first.data["jobId"]) == ("job.started", "1", job["id"])
    ((_, last_seq),) = await _streams(db, keys.app_id, user)
    assert last_seq == 1


async def test_a_subscriber_waiting_for_a_new_stream_misses_nothing(
    server, keys, client, db
) -> None:
    """One subscriber connects before the user's stream exists, another after it exists:
    both see every event from where they started, in order, with no gaps."""
    user = "u_first_write"
    async with open_sse(server.url, {"userId": user}, keys.auth(keys.public)) as early:
        assert (await early.next()).event == "connected"
        job = await create_job(client, userId=user)
        async with open_sse(server.url, {"userId": user}, keys.auth(keys.public)) as late:
            hello = await late.next()
            assert hello.event == "connected"
            for value in range(1, 11):
                await progress(client, job["id"], value * 5)
            late_events = await late.take(10 - int(hello.id) + 1)
        early_events = await early.take(11)
    assert [int(m.id) for m in early_events] == list(range(1, 12))
    assert early_events[0].event == "job.started"
    assert [m.data["progress"] for m in early_events[1:]] == [v * 5 for v in range(1, 11)]
    assert [int(m.id) for m in late_events] == list(range(int(hello.id) + 1, 12))
