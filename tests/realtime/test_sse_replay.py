"""SSE delivery paths that live writes do not exercise: a resume narrowed to a job (its
children come from the log's replay) and the hub's poll, which catches up events whose
NOTIFY never came."""

from __future__ import annotations

import asyncpg

from tests.conftest import AppKeys
from tests.support.harness import ServerProcess
from tests.support.helpers import complete, create_child, create_job, create_parent, progress
from tests.support.sse_client import open_sse


async def _stream_id(db: asyncpg.Connection, keys: AppKeys, user: str) -> int:
    return await db.fetchval(
        "SELECT stream_id FROM event_streams WHERE app_id=$1 AND mode='test' AND user_id=$2",
        keys.app_id,
        user,
    )


async def test_a_resume_narrowed_to_a_parent_replays_its_childrens_events(
    server: ServerProcess, keys: AppKeys, client, db: asyncpg.Connection
) -> None:
    user = "u_replay_children"
    parent = await create_parent(client, 2, userId=user)
    other = await create_job(client, userId=user)  # same user, not in the family
    children = [await create_child(client, parent, i) for i in range(2)]
    await progress(client, children[0]["id"], 40)
    await progress(client, other["id"], 10)
    await complete(client, children[1]["id"])
    family = {parent["id"], *(c["id"] for c in children)}
    sid = await _stream_id(db, keys, user)
    # The expected replay, from the log by job id alone: everything about the parent or one
    # of the children after the parent's own job.started (seq 1).
    expected = [
        (r["seq"], r["event"], r["job_id"])
        for r in await db.fetch(
            "SELECT seq, event, job_id FROM events WHERE stream_id=$1 AND seq > 1 ORDER BY seq",
            sid,
        )
        if r["job_id"] in family
    ]
    assert {job for _, _, job in expected} == family
    assert [e for _, e, j in expected if j == children[0]["id"]] == ["job.started", "job.progress"]

    headers = {**keys.auth(keys.public), "Last-Event-ID": "1"}
    params = {"userId": user, "jobId": parent["id"]}
    async with open_sse(server.url, params, headers) as s:
        assert (await s.next()).event == "connected"
        # A live event after the replay marks its end: everything before it is the replay.
        await progress(client, children[0]["id"], 60)
        got = []
        while not got or got[-1].data.get("progress") != 60 or got[-1].event != "job.progress":
            (m,) = await s.take(1)
            got.append(m)
    live_seq = int(got[-1].id)
    replayed = [(int(m.id), m.event, m.data["jobId"]) for m in got if int(m.id) < live_seq]
    assert replayed == expected
    assert other["id"] not in {m.data["jobId"] for m in got}


async def test_an_event_whose_notification_was_lost_is_delivered_by_the_poll(
    server: ServerProcess, keys: AppKeys, client, db: asyncpg.Connection
) -> None:
    """An event committed without NOTIFY (as when a notification is lost) still reaches a
    connected subscriber, with no later write to wake the hub."""
    user = "u_lost_notify"
    job = await create_job(client, userId=user)
    sid = await _stream_id(db, keys, user)
    async with open_sse(server.url, {"userId": user}, keys.auth()) as s:
        assert (await s.next()).event == "connected"
        async with db.transaction():
            seq = await db.fetchval(
                "UPDATE event_streams SET last_seq = last_seq + 1 WHERE stream_id=$1 "
                "RETURNING last_seq",
                sid,
            )
            await db.execute(
                "INSERT INTO events (stream_id, seq, job_id, event, payload, created_at) "
                "VALUES ($1, $2, $3, 'job.progress', $4::jsonb, now())",
                sid,
                seq,
                job["id"],
                f'{{"jobId":"{job["id"]}","progress":33}}',
            )
        # Nothing else is written: only the hub's own poll can find this event.
        (got,) = await s.take(1, wait=30)
    assert (int(got.id), got.event, got.data["progress"]) == (seq, "job.progress", 33)
