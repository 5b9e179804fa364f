"""GET /v1/sse over real HTTP against a real server and PostgreSQL."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from tests.support.harness import start_server
from tests.support.helpers import (
    assert_error,
    complete,
    create_child,
    create_job,
    create_parent,
    progress,
)
from tests.support.sse_client import open_sse


async def test_job_life_in_order(server, keys, client: httpx.AsyncClient) -> None:
    params = {"userId": "u_life"}
    async with open_sse(server.url, params, keys.auth(keys.public)) as s:
        first = await s.next()
        assert first.event == "connected" and first.data == {"userId": "u_life"}
        job = await create_job(client, userId="u_life")
        await progress(client, job["id"], 40, message="half")
        await complete(client, job["id"])
        got = await s.take(3)
    assert [m.event for m in got] == ["job.started", "job.progress", "job.completed"]
    assert [m.data["jobId"] for m in got] == [job["id"]] * 3
    assert got[1].data["progress"] == 40 and got[2].data["status"] == "completed"
    ids = [int(m.id) for m in got]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert s.response.headers["cache-control"] == "no-cache"
    assert s.response.headers["x-accel-buffering"] == "no"


@pytest.fixture(scope="module")
def tuned(database_url, workdir):
    """A second server process on the same database: fast heartbeats, a tiny client buffer."""
    proc = start_server(
        database_url,
        workdir / "sse-tuned",
        env={"SEENN_SSE_HEARTBEAT_SECONDS": "0.2", "SEENN_SSE_CLIENT_BUFFER": "4"},
    )
    yield proc
    proc.stop()


def _queued(stream) -> list:
    """The messages received but not yet taken, left in place."""
    return list(stream.messages._queue)  # a test's look at its own queue


async def _stream_last_seq(db, keys, user: str) -> int:
    return await db.fetchval(
        "SELECT last_seq FROM event_streams WHERE app_id=$1 AND mode='test' AND user_id=$2",
        keys.app_id,
        user,
    )


async def _stream_id(db, keys, user: str, mode: str = "test") -> int:
    return await db.fetchval(
        "SELECT stream_id FROM event_streams WHERE app_id=$1 AND mode=$2 AND user_id=$3",
        keys.app_id,
        mode,
        user,
    )


async def test_sync_then_parent_child_events(server, keys, client) -> None:
    parent = await create_parent(client, 2, userId="u_pc")
    done = await create_job(client, userId="u_pc")
    await complete(client, done["id"])
    async with open_sse(server.url, {"userId": "u_pc", "apiKey": keys.public}) as s:
        assert (await s.next()).event == "connected"
        sync = await s.next()
        assert sync.event == "job.sync" and sync.id is None
        assert sync.data["jobId"] == parent["id"]  # parents come first
        child = await create_child(client, parent, 0)
        await progress(client, child["id"], 50)
        got = await s.take(4)
    names = [(m.event, m.data["jobId"]) for m in got]
    assert ("job.started", child["id"]) in names
    assert ("child.progress", parent["id"]) in names
    assert ("parent.updated", parent["id"]) in names
    # child.progress is the parent as the child moved it: the React Native SDK merges it into
    # the job found by data.parentJobId and stores the result under data.jobId.
    child_progress = next(m for m in got if m.event == "child.progress")
    assert child_progress.data["parentJobId"] == child_progress.data["jobId"] == parent["id"]
    assert child_progress.data["progress"] == 25 and child_progress.data["status"] == "running"
    assert child_progress.data["children"]["running"] == 1
    assert child_progress.data["child"] == {
        "id": child["id"],
        "childIndex": 0,
        "status": "running",
        "progress": 50,
    }
    started = next(m for m in got if m.event == "job.started")
    assert started.data["parentJobId"] == parent["id"]  # a child's own events name its parent
    assert "parentJobId" not in next(m for m in got if m.event == "parent.updated").data


async def test_job_filter_narrows_to_job_and_children(server, keys, client) -> None:
    parent = await create_parent(client, 2, userId="u_f")
    other = await create_job(client, userId="u_f")
    async with open_sse(
        server.url, {"userId": "u_f", "jobId": parent["id"], "key": keys.public}
    ) as s:
        hello = await s.next()
        assert hello.event == "connected"
        assert hello.data == {"userId": "u_f", "jobId": parent["id"]}
        assert (await s.next()).data["jobId"] == parent["id"]
        await progress(client, other["id"], 10)
        child = await create_child(client, parent, 1)
        await progress(client, child["id"], 30)
        got = await s.take(3)
    assert [m.data["jobId"] for m in got][0] == child["id"]  # `other` filtered out
    assert {m.data["jobId"] for m in got} == {parent["id"], child["id"]}
    assert {m.event for m in got} >= {"job.started", "child.progress"}


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_gets_exactly_the_missed_events(server, keys, client, how) -> None:
    job = await create_job(client, userId=f"u_r{how}")
    async with open_sse(server.url, {"userId": f"u_r{how}"}, keys.auth()) as s:
        await progress(client, job["id"], 10)
        (seen,) = await s.take(1)
    for value in (20, 30, 40):
        await progress(client, job["id"], value)
    params = {"userId": f"u_r{how}"}
    headers = keys.auth()
    if how == "header":
        headers["Last-Event-ID"] = seen.id
    else:
        params["lastEventId"] = seen.id
    async with open_sse(server.url, params, headers) as s:
        assert (await s.next()).event == "connected"
        missed = await s.take(3)
        await progress(client, job["id"], 50)
        (live,) = await s.take(1)
        assert [m.data["progress"] for m in missed] == [20, 30, 40]
        assert live.data["progress"] == 50
        ids = [int(m.id) for m in [*missed, live]]
        assert ids == list(range(int(seen.id) + 1, int(seen.id) + 5))
        # Nothing duplicated at the seam: the next message is a sentinel written now.
        await progress(client, job["id"], 60)
        sentinel = await s.next(skip=("heartbeat",))
        assert (sentinel.event, sentinel.id) == ("job.progress", str(ids[-1] + 1))
        assert sentinel.data["progress"] == 60


async def test_unknown_or_pruned_id_gets_job_sync(server, keys, client, db) -> None:
    job = await create_job(client, userId="u_old")
    await progress(client, job["id"], 5)
    sid = await _stream_id(db, keys, "u_old")
    await db.execute("DELETE FROM events WHERE stream_id=$1 AND seq=1", sid)  # pruned
    for last in ("0", "999999"):
        headers = {**keys.auth(), "Last-Event-ID": last}
        async with open_sse(server.url, {"userId": "u_old"}, headers) as s:
            assert (await s.next()).event == "connected"
            sync = await s.next()
            assert sync.event == "job.sync" and sync.data["progress"] == 5


async def test_bad_requests_are_enveloped(server, keys) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        assert_error(await c.get("/v1/sse", params={"userId": "u"}), 401, "UNAUTHORIZED")
        bad = {"userId": "u", "apiKey": "sk_test_nope"}
        assert_error(await c.get("/v1/sse", params=bad), 401, "UNAUTHORIZED")
        h = keys.auth()
        assert_error(await c.get("/v1/sse", headers=h), 400, "VALIDATION_ERROR")
        r = await c.get("/v1/sse", params={"userId": "u", "lastEventId": "abc"}, headers=h)
        assert_error(r, 400, "VALIDATION_ERROR")
        r = await c.get("/v1/sse", params={"userId": "u", "jobId": "nope"}, headers=h)
        assert_error(r, 400, "VALIDATION_ERROR")


async def test_isolation_between_apps_modes_users(server, keys, client, database_url) -> None:
    from tests.conftest import make_app

    other = await make_app(database_url)
    async with open_sse(server.url, {"userId": "u_iso"}, keys.auth(keys.public)) as s:
        assert (await s.next()).event == "connected"
        async with httpx.AsyncClient(base_url=f"{server.url}/v1", timeout=30) as c:
            c.headers.update(other.auth())
            await create_job(c, userId="u_iso")  # another app
            c.headers.update(keys.auth(keys.live_secret))
            await create_job(c, userId="u_iso")  # same app, live mode
        await create_job(client, userId="u_other")  # another user
        mine = await create_job(client, userId="u_iso")
        (first,) = await s.take(1)
        assert first.data["jobId"] == mine["id"]
        # A sentinel: whatever else the stream would carry arrives before it.
        sentinel = await create_job(client, userId="u_iso")
        after = await s.next(skip=("heartbeat",))
        assert (after.event, after.data["jobId"]) == ("job.started", sentinel["id"])


async def test_write_on_one_replica_reaches_the_other(server, tuned, keys, client) -> None:
    async with open_sse(tuned.url, {"userId": "u_x"}, keys.auth(keys.public)) as s:
        assert (await s.next()).event == "connected"
        job = await create_job(client, userId="u_x")  # written through `server`
        (got,) = await s.take(1)
    assert got.event == "job.started" and got.data["jobId"] == job["id"]


async def test_heartbeats_without_id(tuned, keys) -> None:
    async with open_sse(tuned.url, {"userId": "u_hb"}, keys.auth()) as s:
        assert (await s.next()).event == "connected"
        beats = [await s.next(wait=5, skip=()) for _ in range(3)]
    assert [b.event for b in beats] == ["heartbeat"] * 3
    assert all(b.id is None for b in beats)
    # How far apart they arrive is left to bench/: on a loaded machine a client may read
    # several at once, or late.


async def test_a_commit_larger_than_the_buffer_is_read_from_the_log_without_a_disconnect(
    server, tuned, keys, client, db
) -> None:
    job = await create_job(client, userId="u_slow")
    sid = await _stream_id(db, keys, "u_slow")
    async with (
        open_sse(tuned.url, {"userId": "u_slow"}, keys.auth()) as small,
        open_sse(server.url, {"userId": "u_slow"}, keys.auth()) as big,
    ):
        assert (await small.next()).event == "connected"
        assert (await big.next()).event == "connected"
        # One commit with more events than the tiny buffer (4 events) holds.
        async with db.transaction():
            last = await db.fetchval(
                "UPDATE event_streams SET last_seq = last_seq + 10 WHERE stream_id=$1 "
                "RETURNING last_seq",
                sid,
            )
            await db.executemany(
                "INSERT INTO events (stream_id, seq, job_id, event, payload, created_at) "
                "VALUES ($1, $2, $3, 'job.progress', $4::jsonb, now())",
                [
                    (sid, last - 10 + i, job["id"], f'{{"jobId":"{job["id"]}","progress":{i}}}')
                    for i in range(1, 11)
                ],
            )
        await client.post("/jobs/" + job["id"] + "/progress", json={"progress": 1})
        expected = list(range(last - 9, last + 2))
        assert [int(m.id) for m in await big.take(11)] == expected
        # The small buffer overflowed: that stream read the rest from the log, in order,
        # and stays open for what comes next.
        assert [int(m.id) for m in await small.take(11)] == expected
        await progress(client, job["id"], 2)
        (live,) = await small.take(1)
        assert int(live.id) == last + 2 and live.data["progress"] == 2


async def test_reader_never_skips_an_uncommitted_event(server, keys, client, db) -> None:
    """A writer holding the stream counter blocks later writers, so ids appear in order."""
    job = await create_job(client, userId="u_lock")
    sid = await _stream_id(db, keys, "u_lock")
    async with open_sse(server.url, {"userId": "u_lock"}, keys.auth()) as s:
        assert (await s.next()).event == "connected"
        tx = db.transaction()
        await tx.start()
        held = await db.fetchval(
            "UPDATE event_streams SET last_seq = last_seq + 1 WHERE stream_id=$1 "
            "RETURNING last_seq",
            sid,
        )
        await db.execute(
            "INSERT INTO events (stream_id, seq, job_id, event, payload, created_at) "
            "VALUES ($1, $2, $3, 'job.progress', $4::jsonb, now())",
            sid,
            held,
            job["id"],
            f'{{"jobId":"{job["id"]}","progress":1}}',
        )
        later = asyncio.create_task(progress(client, job["id"], 60))
        # The later write waits on the stream counter the test holds, so it cannot become
        # visible first: once it is seen waiting, nothing has reached the stream.
        while not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND application_name = 'seenn-server'"
        ):
            assert not later.done(), later.result()
            await asyncio.sleep(0.05)
        assert not later.done()
        assert [m for m in _queued(s) if m.event not in ("heartbeat", "job.sync")] == []
        await tx.commit()
        await later
        got = await s.take(2)
    assert [int(m.id) for m in got] == [held, held + 1]
    assert got[1].data["progress"] == 60


async def test_concurrent_writers_and_flapping_subscriber(server, keys, client, db) -> None:
    user = "u_flap"
    jobs = [await create_job(client, userId=user) for _ in range(4)]
    received: list[int] = []
    stop = asyncio.Event()

    async def subscriber() -> None:
        last: str | None = "4"  # after the 4 job.started events
        while not stop.is_set():
            headers = keys.auth(keys.public)
            if last is not None:
                headers["Last-Event-ID"] = last
            async with open_sse(server.url, {"userId": user}, headers) as s:
                seen: list[int] = []
                deadline = asyncio.get_running_loop().time() + random.uniform(0.05, 0.4)
                while (left := deadline - asyncio.get_running_loop().time()) > 0:
                    try:
                        m = await s.next(wait=left, skip=("heartbeat", "connected", "job.sync"))
                    except TimeoutError:
                        break
                    if m is None:
                        break
                    seen.append(int(m.id))
                    last = m.id
                assert seen == sorted(seen)
                received.extend(seen)
        # A final resume collects the tail, up to the stream's last event (known once the
        # writers are done) and one sentinel after it: anything repeated comes before that.
        headers = keys.auth(keys.public)
        if last is not None:
            headers["Last-Event-ID"] = last
        async with open_sse(server.url, {"userId": user}, headers) as s:
            await progress(client, jobs[0]["id"], 99)  # the sentinel
            final = await _stream_last_seq(db, keys, user)
            while True:
                (m,) = await s.take(1)
                if int(m.id) == final:
                    break
                received.append(int(m.id))

    async def writer(job_id: str) -> None:
        for value in range(1, 16):
            await progress(client, job_id, value)

    sub = asyncio.create_task(subscriber())
    await asyncio.sleep(0.3)
    await asyncio.gather(*(writer(j["id"]) for j in jobs))
    stop.set()
    await asyncio.wait_for(sub, 60)
    sid = await _stream_id(db, keys, user)
    first_live = 5  # the 4 job.started events came before the first connection
    expected = [
        r[0]
        for r in await db.fetch(
            "SELECT seq FROM events WHERE stream_id=$1 AND seq >= $2 ORDER BY seq", sid, first_live
        )
    ][:-1]  # without the sentinel
    assert len(expected) == 60
    assert sorted(received) == expected, "every event exactly once"
    assert len(received) == len(set(received))


async def test_max_lifetime_and_shutdown_send_connection_idle(database_url, workdir, keys) -> None:
    proc = start_server(
        database_url, workdir / "sse-life", env={"SEENN_SSE_MAX_CONNECTION_SECONDS": "1"}
    )
    try:
        async with open_sse(proc.url, {"userId": "u_life2"}, keys.auth()) as s:
            assert (await s.next()).event == "connected"
            idle = await s.next(wait=10)
            assert idle.event == "connection.idle" and idle.id is None
            assert idle.data["reason"] == "maxLifetime" and idle.data["idleTime"] >= 0
            assert await s.next(wait=10) is None  # then the server closes it
        async with open_sse(proc.url, {"userId": "u_life2"}, keys.auth()) as s:
            assert (await s.next()).event == "connected"
            stopper = asyncio.get_running_loop().run_in_executor(None, proc.stop)
            idle = await s.next(wait=10)
            assert idle.event == "connection.idle" and idle.data["reason"] == "shutdown"
            await stopper
    finally:
        proc.stop()


async def test_pruner_deletes_old_events_in_batches(database_url, keys, client, db) -> None:
    from app.background.event_pruner import prune_once
    from app.db.engine import create_engine
    from app.settings import Settings

    job = await create_job(client, userId="u_prune")
    for value in (1, 2, 3, 4):
        await progress(client, job["id"], value)
    sid = await _stream_id(db, keys, "u_prune")
    await db.execute(
        "UPDATE events SET created_at = now() - interval '2 hours' WHERE stream_id=$1 AND seq <= 3",
        sid,
    )
    engine = create_engine(database_url, Settings(database_url=database_url))
    try:
        deleted = await prune_once(engine, retention_hours=1, batch=2)
    finally:
        await engine.dispose()
    assert deleted >= 3
    rows = await db.fetch("SELECT seq FROM events WHERE stream_id=$1 ORDER BY seq", sid)
    left = [r[0] for r in rows]
    assert left == [4, 5]


async def test_a_resume_too_far_behind_gets_job_sync_instead_of_a_replay(
    database_url, tmp_path, keys, client
) -> None:
    limited = start_server(
        database_url, tmp_path / "logs", env={"SEENN_SSE_MAX_REPLAY_EVENTS": "3"}
    )
    try:
        job = await create_job(client, userId="u_far")  # event 1
        for value in (10, 20, 30):  # events 2..4
            await progress(client, job["id"], value)
        near = {**keys.auth(), "Last-Event-ID": "1"}  # 3 behind: replayed
        async with open_sse(limited.url, {"userId": "u_far"}, near) as s:
            assert (await s.next()).event == "connected"
            replayed = await s.take(3)
            assert [e.id for e in replayed] == ["2", "3", "4"]
            assert [e.data["progress"] for e in replayed] == [10, 20, 30]
        await progress(client, job["id"], 40)  # event 5
        far = {**keys.auth(), "Last-Event-ID": "1"}  # 4 behind: current state instead
        async with open_sse(limited.url, {"userId": "u_far"}, far) as s:
            connected = await s.next()
            assert connected.event == "connected" and connected.id == "5"
            sync = await s.next()
            assert sync.event == "job.sync" and sync.data["progress"] == 40
            await progress(client, job["id"], 50)
            live = await s.next()
            assert (live.event, live.id, live.data["progress"]) == ("job.progress", "6", 50)
    finally:
        limited.stop()


async def test_sync_on_connect_sends_the_newest_unfinished_jobs_in_creation_order(
    database_url, tmp_path, keys, client
) -> None:
    limited = start_server(database_url, tmp_path / "logs", env={"SEENN_SSE_SYNC_LIMIT": "2"})
    try:
        jobs = [await create_job(client, userId="u_many") for _ in range(4)]
        await complete(client, jobs[3]["id"])  # finished: after every unfinished job
        async with open_sse(limited.url, {"userId": "u_many"}, keys.auth()) as s:
            assert (await s.next()).event == "connected"
            syncs = [await s.next(), await s.next()]
            assert [m.event for m in syncs] == ["job.sync", "job.sync"]
            assert [m.data["jobId"] for m in syncs] == [jobs[1]["id"], jobs[2]["id"]]
            await progress(client, jobs[0]["id"], 10)  # then the live stream
            live = await s.next()
            assert (live.event, live.data["jobId"]) == ("job.progress", jobs[0]["id"])
    finally:
        limited.stop()


async def test_lines_end_in_a_bare_newline(server, keys, client) -> None:
    # The React Native SDK splits on "\n" and dispatches on an empty line: a CR breaks it.
    job = await create_job(client, userId="u_lf")
    await progress(client, job["id"], 10)
    headers = {**keys.auth(), "Last-Event-ID": "0"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        params = {"userId": "u_lf"}
        async with c.stream("GET", "/v1/sse", params=params, headers=headers) as r:
            raw = b""
            async for chunk in r.aiter_raw():
                raw += chunk
                if raw.count(b"\n\n") >= 3:  # connected, job.started, job.progress
                    break
    assert b"\r" not in raw
    messages = raw.split(b"\n\n")[:3]
    assert [next(x for x in m.split(b"\n") if x.startswith(b"event:")) for m in messages] == [
        b"event: connected",
        b"event: job.started",
        b"event: job.progress",
    ]
