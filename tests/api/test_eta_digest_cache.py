"""Each server process keeps the ETA statistics it decoded, by key and version, and the
statement that reads a job sends the statistics only for a version the process lacks
(``app.db.eta_digests``). These tests pin that an estimate always rests on the key's current
statistics: after another process's completions (pending samples) and after their
compaction, a process that cached the older version still estimates from the new one."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import eta_digests
from app.db.engine import create_engine, plain_url
from app.db.repository import Owner, Repository
from app.domain import estimator, eta
from app.domain.commands import UpdateProgress
from app.settings import Settings
from tests.conftest import AppKeys
from tests.support.harness import start_server
from tests.support.helpers import complete, create_job, progress

KEY = "wf-digest-cache"


async def _run_job(client: httpx.AsyncClient, db: asyncpg.Connection, seconds: float) -> None:
    """A job of the key that ran for ``seconds`` (its start moved back), with a profile."""
    job = await create_job(client, workflowId=KEY)
    await progress(client, job["id"], 10)
    await db.execute(
        "UPDATE jobs SET started_at = started_at - make_interval(secs => $2) WHERE id = $1",
        job["id"],
        seconds,
    )
    await complete(client, job["id"])


async def _stats(db: asyncpg.Connection, app_id: str) -> dict[str, Any]:
    """The key's statistics as a reader sees them: the stored row and its pending samples,
    in one snapshot."""
    row = await db.fetchrow(
        """SELECT s.count, s.digest::text AS digest, s.default_duration,
                  (SELECT jsonb_agg(x.sample ORDER BY x.id)::text FROM eta_samples x
                   WHERE x.app_id = $1 AND x.mode = 'test' AND x.eta_key = $2) AS pending
           FROM (SELECT 1) one LEFT JOIN eta_stats s
             ON s.app_id = $1 AND s.mode = 'test' AND s.eta_key = $2""",
        app_id,
        KEY,
    )
    assert row is not None
    return {
        "count": row["count"] or 0,
        "digest": orjson.loads(row["digest"]) if row["digest"] else None,
        "default_duration": row["default_duration"],
        "pending": orjson.loads(row["pending"]) if row["pending"] else [],
    }


def _ms(delta: timedelta) -> float:
    return max(delta.total_seconds() * 1000, 0.0)


async def _shown_and_expected(
    db: asyncpg.Connection, job_id: str, stats: dict[str, Any]
) -> tuple[int, int]:
    """The remaining ms the job's last write stored, and what ``stats`` give at the same
    progress and elapsed time (the write's ``now`` is the row's ``updated_at``)."""
    job = await db.fetchrow(
        "SELECT progress, started_at, updated_at, estimated_completion_at,"
        " eta_state::text AS eta_state FROM jobs WHERE id = $1",
        job_id,
    )
    assert job is not None and job["started_at"] is not None
    now: datetime = job["updated_at"]
    back = float(orjson.loads(job["eta_state"]).get("b", 0))
    elapsed = _ms(now - (job["started_at"] - timedelta(milliseconds=back)))
    history = eta._history(stats, None)
    estimate = estimator.remaining(history, job["progress"], elapsed)
    assert estimate is not None and estimate.from_history
    shown = round(_ms(job["estimated_completion_at"] - now))
    return shown, round(estimate.remaining_ms)


async def _pending(db: asyncpg.Connection, app_id: str) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM eta_samples WHERE app_id = $1 AND eta_key = $2", app_id, KEY
    )


async def _compacted(db: asyncpg.Connection, app_id: str) -> None:
    """Wait until the writing process has folded the key's samples into its row."""
    for _ in range(500):
        if await _pending(db, app_id) == 0:
            return
        await asyncio.sleep(0.02)
    assert await _pending(db, app_id) == 0


async def test_a_process_with_the_old_statistics_cached_estimates_from_the_new(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    keys: AppKeys,
    database_url: str,
    tmp_path: Path,
) -> None:
    for _ in range(5):
        await _run_job(client, db, 10)
    await _compacted(db, keys.app_id)
    other = start_server(database_url, tmp_path / "logs")
    try:
        async with httpx.AsyncClient(
            base_url=f"{other.url}/v1", headers=keys.auth(), timeout=30
        ) as second:
            job = await create_job(second, workflowId=KEY)
            await progress(second, job["id"], 0)
            await db.execute(  # seconds of processing, so estimates differ by seconds
                "UPDATE jobs SET started_at = started_at - interval '5 seconds' WHERE id = $1",
                job["id"],
            )
            await progress(second, job["id"], 30)  # the second process caches this version
            old = await _stats(db, keys.app_id)
            shown, expected = await _shown_and_expected(db, job["id"], old)
            assert shown == expected

            # The first process completes jobs ten times longer: new samples, a new version.
            for _ in range(3):
                await _run_job(client, db, 100)
            await progress(second, job["id"], 40)
            new = await _stats(db, keys.app_id)
            assert eta.merged(new)["count"] == 8
            shown, expected = await _shown_and_expected(db, job["id"], new)
            stale = (await _shown_and_expected(db, job["id"], old))[1]
            assert stale != expected  # the test can tell the two apart
            assert shown == expected

            # Once compacted, the stored row carries the new version: still the new figures.
            await _compacted(db, keys.app_id)
            await progress(second, job["id"], 50)
            compacted = await _stats(db, keys.app_id)
            assert compacted["digest"]["t"] == estimator_version_of(new)
            shown, expected = await _shown_and_expected(db, job["id"], compacted)
            assert shown == expected

            # A reset, then a new history: a new version, and the estimate follows it.
            assert (await client.delete(f"/eta/{KEY}")).json()["deleted"] is True
            for _ in range(5):
                await _run_job(client, db, 30)
            await _compacted(db, keys.app_id)
            await progress(second, job["id"], 60)
            relearned = await _stats(db, keys.app_id)
            assert relearned["count"] == 5
            assert relearned["digest"]["t"] != compacted["digest"]["t"]
            shown, expected = await _shown_and_expected(db, job["id"], relearned)
            stale = (await _shown_and_expected(db, job["id"], compacted))[1]
            assert stale != expected
            assert shown == expected
    finally:
        other.stop()


def estimator_version_of(stats: dict[str, Any]) -> int:
    """The version the key's statistics reach once their pending samples are folded."""
    return int(eta.merged(stats)["digest"]["t"])


def test_the_cache_keeps_at_most_its_bound_and_forgets_the_least_recently_used() -> None:
    eta_digests.clear()
    try:
        for version in range(eta_digests.KEPT + 10):
            eta_digests.put("app", "test", "k", version, {"t": version})
            eta_digests.held().get("app", "test", "k", 0)  # the first stays in use
        held = eta_digests.held()
        assert len(held.digests) == eta_digests.KEPT
        assert len(held.versions) == eta_digests.KEPT
        assert held.get("app", "test", "k", 0) == {"t": 0}
        assert held.get("app", "test", "k", 1) is None  # the least recently used
        assert held.get("app", "test", "k", eta_digests.KEPT + 9) is not None
        # A version is held per key: the same version under another key is not a hit.
        assert held.get("app", "test", "other", 0) is None
        assert held.get("app", "live", "k", 0) is None
        # What a statement was told stays readable while later puts evict from the cache.
        eta_digests.put("app", "test", "k", -1, {"t": -1})
        eta_digests.put("app", "test", "k", -2, {"t": -2})
        assert eta_digests.held().get("app", "test", "k", eta_digests.KEPT + 9) is not None
        assert held.get("app", "test", "k", 11) == {"t": 11}  # the least recently used then
        assert eta_digests.held().get("app", "test", "k", 11) is None
    finally:
        eta_digests.clear()


@pytest.fixture
async def engine(database_url: str) -> Any:
    engine = create_engine(database_url, Settings(database_url=database_url))
    yield engine
    await engine.dispose()


async def test_a_version_named_but_held_for_another_key_is_read_again_whole(
    client: httpx.AsyncClient, db: asyncpg.Connection, keys: AppKeys, engine: AsyncEngine
) -> None:
    """The statement names the versions the process holds, whatever their key; a key whose
    version is held only for another key gets its statistics whole in a second read."""
    for _ in range(5):
        await _run_job(client, db, 10)
    await _compacted(db, keys.app_id)
    job = await create_job(client, workflowId=KEY)
    stats = await _stats(db, keys.app_id)
    version = int(stats["digest"]["t"])
    owner = Owner(keys.app_id, "test")
    eta_digests.clear()
    try:
        eta_digests.put(keys.app_id, "test", "another-key", version, {"t": version, "r": []})
        async with engine.connect() as conn:
            got = await Repository(conn).read_plain_job(
                owner, job["id"], datetime.now().astimezone()
            )
        assert got is not None
        assert got[1] is not None and got[1]["digest"] == stats["digest"]
        # Now held for this key too: the next read takes it from the process.
        assert eta_digests.held().get(keys.app_id, "test", KEY, version) == stats["digest"]
        async with engine.connect() as conn:
            again = await Repository(conn).read_plain_job(
                owner, job["id"], datetime.now().astimezone()
            )
        assert again is not None and again[1] is not None
        assert again[1]["digest"] is eta_digests.held().get(keys.app_id, "test", KEY, version)
    finally:
        eta_digests.clear()


async def test_a_digest_evicted_while_its_statement_waits_is_not_read_again(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    keys: AppKeys,
    engine: AsyncEngine,
    database_url: str,
) -> None:
    """A write's statement named a version the process held; while it waited for the job's
    row lock, other keys' digests pushed that one out of the cache. The write still takes
    the digest from what the statement was told, in that one statement: the very object
    held (a second read would decode a new copy)."""
    for _ in range(5):
        await _run_job(client, db, 10)
    await _compacted(db, keys.app_id)
    job = await create_job(client, workflowId=KEY)
    owner = Owner(keys.app_id, "test")
    eta_digests.clear()
    try:
        async with engine.begin() as conn:  # the process learns the key's current version
            first = await Repository(conn).lock_family(
                owner, job["id"], datetime.now().astimezone()
            )
        assert first is not None and first[0][1] is not None
        kept = first[0][1]["digest"]
        version = int(kept["t"])
        assert eta_digests.held().get(keys.app_id, "test", KEY, version) is kept

        holder = await asyncpg.connect(plain_url(database_url))
        try:
            await holder.execute("BEGIN")
            await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job["id"])

            async def write() -> Any:
                async with engine.begin() as conn:
                    return await Repository(conn).lock_family(
                        owner, job["id"], datetime.now().astimezone()
                    )

            waiting = asyncio.create_task(write())
            for _ in range(500):  # until the statement waits for the row lock
                blocked = await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    holder.get_server_pid(),
                )
                if blocked:
                    break
                await asyncio.sleep(0.02)
            assert blocked == 1
            for other in range(eta_digests.KEPT):
                eta_digests.put(keys.app_id, "test", f"other-{other}", other, {"t": other})
            assert eta_digests.held().get(keys.app_id, "test", KEY, version) is None
            await holder.execute("ROLLBACK")
            got = await waiting
        finally:
            await holder.close()
        assert got is not None and got[0][1] is not None
        assert got[0][1]["digest"] is kept
    finally:
        eta_digests.clear()


async def _set_stats(db: asyncpg.Connection, app_id: str, key: str, digest: dict[str, Any]) -> None:
    """Store ``digest`` as the key's statistics (five completions), replacing any."""
    await db.execute(
        """INSERT INTO eta_stats (app_id, mode, eta_key, count, sum_duration, digest,
                                  last_updated)
           VALUES ($1, 'test', $2, 5, 50000, $3::jsonb, now())
           ON CONFLICT (app_id, mode, eta_key) DO UPDATE SET digest = EXCLUDED.digest""",
        app_id,
        key,
        orjson.dumps(digest).decode(),
    )


def _digest(version: int, mark: str) -> dict[str, Any]:
    return {**estimator.empty_digest(), "t": version, "mark": mark}


async def test_a_held_version_serves_only_its_own_app_mode_and_key(
    client: httpx.AsyncClient, db: asyncpg.Connection, keys: AppKeys, engine: AsyncEngine
) -> None:
    """The statement returns no digest when the key's version is among those the process
    holds, whatever their key. The version then reached by a key is held for another app,
    another key and the other mode (each with other content), and the key's own previous
    version is held too: each read still gets exactly the stored digest. A parent's and its
    child's keys, read by one statement, each get their own."""
    owner = Owner(keys.app_id, "test")
    parent = await create_job(client, jobType="pack", totalChildren=1)
    child = await create_job(client, workflowId=KEY, parentJobId=parent["id"], childIndex=0)
    old, new, theirs = 4_000_001, 4_000_002, 4_000_003
    await _set_stats(db, keys.app_id, KEY, _digest(old, "old"))
    await _set_stats(db, keys.app_id, "pack#parent", _digest(theirs, "parent"))

    async def read() -> tuple[dict[str, Any], dict[str, Any]]:
        async with engine.begin() as conn:
            got = await Repository(conn).lock_family(owner, child["id"], now())
        assert got is not None and got[1] is not None
        (job, stats), (up, parent_stats) = got
        assert job["id"] == child["id"] and up["id"] == parent["id"]
        assert stats is not None and parent_stats is not None
        return stats["digest"], parent_stats["digest"]

    eta_digests.clear()
    try:
        assert await read() == (_digest(old, "old"), _digest(theirs, "parent"))
        for app_id, mode, key in (
            ("another-app", "test", KEY),
            (keys.app_id, "test", "another-key"),
            (keys.app_id, "live", KEY),
            (keys.app_id, "test", "pack#parent"),
        ):
            eta_digests.put(app_id, mode, key, new, _digest(new, f"{app_id}/{mode}/{key}"))
        await _set_stats(db, keys.app_id, KEY, _digest(new, "new"))
        assert await read() == (_digest(new, "new"), _digest(theirs, "parent"))
        # Held now under the key's own name: served from the process, the very objects.
        mine = eta_digests.held().get(keys.app_id, "test", KEY, new)
        pack = eta_digests.held().get(keys.app_id, "test", "pack#parent", theirs)
        got, got_parent = await read()
        assert got is mine and got_parent is pack
        assert got == _digest(new, "new") and got_parent == _digest(theirs, "parent")
        # Back to the old version (a statistics row written anew): the old digest is right.
        await _set_stats(db, keys.app_id, KEY, _digest(old, "old"))
        assert await read() == (_digest(old, "old"), _digest(theirs, "parent"))
    finally:
        eta_digests.clear()


def now() -> datetime:
    return datetime.now().astimezone()


async def test_folding_pending_samples_leaves_the_held_digest_as_stored(
    client: httpx.AsyncClient, db: asyncpg.Connection, keys: AppKeys, engine: AsyncEngine
) -> None:
    """Digests held by the process are shared by every request: an estimate that folds the
    key's pending samples into them works on a copy, and the held digest stays the stored
    one."""
    for _ in range(5):
        await _run_job(client, db, 10)
    await _compacted(db, keys.app_id)
    job = await create_job(client, workflowId=KEY)
    await progress(client, job["id"], 0)
    owner = Owner(keys.app_id, "test")
    eta_digests.clear()
    try:
        async with engine.begin() as conn:  # the process holds the key's digest
            first = await Repository(conn).read_plain_job(owner, job["id"], now())
        assert first is not None and first[1] is not None and not first[1]["pending"]
        stored = orjson.loads(orjson.dumps(first[1]["digest"]))
        await db.execute(  # completions whose samples stay pending: no compaction runs here
            """INSERT INTO eta_samples (app_id, mode, eta_key, sample, created_at)
               VALUES ($1, 'test', $2, $3::jsonb, now()), ($1, 'test', $2, $4::jsonb, now())""",
            keys.app_id,
            KEY,
            orjson.dumps({"d": 90_000, "m": {"10": 9000}, "w": 5.0, "f": None}).decode(),
            orjson.dumps({"d": 95_000, "m": {"10": 9500}, "w": 6.0, "f": None}).decode(),
        )
        async with engine.begin() as conn:
            got = await Repository(conn).read_plain_job(owner, job["id"], now())
        assert got is not None and got[1] is not None and len(got[1]["pending"]) == 2
        held = got[1]["digest"]
        assert held is first[1]["digest"]  # from the process, not decoded again
        cmd = UpdateProgress(progress=30)
        columns = eta.on_progress(got[0], got[1], cmd, now())
        assert "estimated_completion_at" in columns
        assert eta.merged(got[1])["digest"]["t"] != stored["t"]
        assert held == stored
        assert eta_digests.held().get(keys.app_id, "test", KEY, stored["t"]) == stored
    finally:
        eta_digests.clear()
