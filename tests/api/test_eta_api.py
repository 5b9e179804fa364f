"""ETA fields on jobs and the /v1/eta API, against the real server and PostgreSQL."""

import asyncio
import json
from datetime import datetime
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import make_app
from tests.support.helpers import (
    assert_error,
    complete,
    create_child,
    create_job,
    create_parent,
    fail,
)
from tests.support.helpers import progress as set_progress


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _eta_seconds(job: dict, since: str = "updatedAt") -> float:
    """Seconds from the job's ``since`` timestamp to its ETA."""
    return (_at(job["estimatedCompletionAt"]) - _at(job[since])).total_seconds()


async def _backdate_creation(db, job_id: str, seconds: float) -> None:
    await db.execute(
        "UPDATE jobs SET created_at = created_at - make_interval(secs => $2) WHERE id = $1",
        job_id,
        seconds,
    )


async def _backdate_start(db, job_id: str, seconds: float) -> None:
    await db.execute(
        "UPDATE jobs SET started_at = started_at - make_interval(secs => $2) WHERE id = $1",
        job_id,
        seconds,
    )


async def _backdate_run(db, job_id: str, seconds: float) -> None:
    """Move the job's start and its last update back: its last report was ``seconds`` ago."""
    await db.execute(
        "UPDATE jobs SET started_at = started_at - make_interval(secs => $2),"
        " updated_at = updated_at - make_interval(secs => $2) WHERE id = $1",
        job_id,
        seconds,
    )


async def _folded_profile(db, key: str) -> list[int]:
    """The profile the key's one completion left in its statistics, ``[duration, f10, ...,
    f90]`` (per mille of the duration at each decile), once the compaction has folded it."""
    for _ in range(600):
        row = await db.fetchrow(
            "SELECT count, digest::text AS digest FROM eta_stats s WHERE eta_key = $1"
            " AND NOT EXISTS (SELECT 1 FROM eta_samples p WHERE p.eta_key = s.eta_key"
            " AND p.app_id = s.app_id AND p.mode = s.mode)",
            key,
        )
        if row is not None:
            assert row["count"] == 1
            profiles: list[list[int]] = json.loads(row["digest"])["r"]
            assert len(profiles) == 1
            return profiles[0]
        await asyncio.sleep(0.05)  # the compaction runs 0.1 s after the write commits
    raise AssertionError(f"the sample of {key} was never folded")


# A job that reached 50 % at 10 % of its time and then ran to the end: the deciles it crossed
# by completing (60-90 %) are placed between its last report and its completion.
LATE_FINISH = [100, 100, 100, 100, 100, 280, 460, 640, 820]


async def run_job(client, db, seconds: float, **fields) -> dict:
    """A job that ran for about ``seconds`` (its start is moved back) and completed."""
    job = await create_job(client, **fields)
    await set_progress(client, job["id"], 10)
    await _backdate_start(db, job["id"], seconds)
    return await complete(client, job["id"])


async def stats_of(client, key: str) -> httpx.Response:
    return await client.get(f"/eta/{quote(key, safe='')}")


async def test_five_completions_turn_on_history_etas_four_do_not(client, db):
    for _ in range(4):
        await run_job(client, db, 10, workflowId="wf-threshold")
    four = await create_job(client, workflowId="wf-threshold")
    assert "estimatedCompletionAt" not in four
    assert "etaConfidence" not in four and "etaBasedOn" not in four
    assert (await stats_of(client, "wf-threshold")).json()["count"] == 4

    await run_job(client, db, 10, workflowId="wf-threshold")
    five = await create_job(client, workflowId="wf-threshold")
    assert _eta_seconds(five, "createdAt") == pytest.approx(10, rel=0.1)
    # The share of the key's scored estimates (jobs 3-5: all within 20 %) that landed,
    # shrunk by two pseudo-observations at 1/2: not count / 50 any more.
    assert five["etaConfidence"] == pytest.approx((3 + 1) / (3 + 2))
    assert five["etaBasedOn"] == 5
    # A terminal job keeps no estimate at all, however it ended.
    done = await complete(client, five["id"])
    assert not {"estimatedCompletionAt", "etaConfidence", "etaBasedOn"} & done.keys()
    cancelled = await create_job(client, workflowId="wf-threshold")
    assert "etaConfidence" in cancelled
    cancelled = (await client.post(f"/jobs/{cancelled['id']}/cancel")).json()
    assert not {"estimatedCompletionAt", "etaConfidence", "etaBasedOn"} & cancelled.keys()
    failed = await create_job(client, workflowId="wf-threshold")
    assert "etaConfidence" in failed
    failed = await fail(client, failed["id"])
    assert not {"estimatedCompletionAt", "etaConfidence", "etaBasedOn"} & failed.keys()


async def test_stats_report_count_average_extremes_and_percentiles(client, db):
    for seconds in range(10, 101, 10):
        await run_job(client, db, seconds, jobType="render")
    response = await stats_of(client, "render")
    assert response.status_code == 200
    stats = response.json()
    assert set(stats) == {
        "etaKey", "count", "avgDuration", "minDuration", "maxDuration",
        "p50Duration", "p95Duration", "confidence", "lastUpdated",
    }  # fmt: skip
    assert stats["etaKey"] == "render" and stats["count"] == 10
    assert stats["minDuration"] == pytest.approx(10_000, abs=1_000)
    assert stats["maxDuration"] == pytest.approx(100_000, abs=1_000)
    assert stats["avgDuration"] == pytest.approx(55_000, abs=1_000)
    assert stats["p50Duration"] == pytest.approx(50_000, rel=0.03)
    assert stats["p95Duration"] == pytest.approx(100_000, rel=0.03)
    assert all(isinstance(stats[k], int) for k in stats if k.endswith("Duration"))
    assert stats["confidence"] == pytest.approx(0.2)
    assert stats["lastUpdated"].endswith("Z") and _at(stats["lastUpdated"])


async def test_estimated_duration_becomes_the_keys_default(client):
    first = await create_job(client, workflowId="wf-default", estimatedDuration=120_000)
    assert _eta_seconds(first, "createdAt") == pytest.approx(120, abs=0.01)
    assert "etaConfidence" not in first
    stats = (await stats_of(client, "wf-default")).json()
    assert stats["count"] == 0 and stats["defaultDuration"] == 120_000
    assert stats["confidence"] == 0
    assert stats["avgDuration"] == stats["minDuration"] == stats["maxDuration"] == 0
    assert "p50Duration" not in stats and None not in stats.values()

    later = await create_job(client, workflowId="wf-default")
    assert _eta_seconds(later, "createdAt") == pytest.approx(120, abs=0.01)
    await create_job(client, workflowId="wf-default", estimatedDuration=30_000)
    assert (await stats_of(client, "wf-default")).json()["defaultDuration"] == 30_000
    last = await create_job(client, workflowId="wf-default")
    assert _eta_seconds(last, "createdAt") == pytest.approx(30, abs=0.01)
    no_key_data = await create_job(client, workflowId="wf-never-seen")
    assert "estimatedCompletionAt" not in no_key_data


async def test_history_beats_a_given_duration_and_an_explicit_eta_beats_history(client, db):
    for _ in range(5):
        await run_job(client, db, 10, jobType="ocr")
    guessed = await create_job(client, jobType="ocr", estimatedDuration=600_000)
    assert _eta_seconds(guessed, "createdAt") == pytest.approx(10, rel=0.1)
    assert guessed["etaBasedOn"] == 5
    explicit = await create_job(
        client, jobType="ocr", estimatedCompletionAt="2030-01-02T03:04:05.678Z"
    )
    assert explicit["estimatedCompletionAt"] == "2030-01-02T03:04:05.678Z"
    assert "etaConfidence" not in explicit and "etaBasedOn" not in explicit


async def test_progress_recalculates_the_eta_and_terminal_jobs_have_none(client, db):
    job = await create_job(client, jobType="transcode", estimatedDuration=1_000)
    await set_progress(client, job["id"], 0)
    await _backdate_start(db, job["id"], 10)
    half = await set_progress(client, job["id"], 50)
    # 50 % in 10 s: the pace says 10 s more; the 1 s guess pulls it only a little.
    assert 5 <= _eta_seconds(half) <= 10.5
    later = await set_progress(client, job["id"], 90)
    assert _eta_seconds(later) == pytest.approx(10 / 90 * 10, rel=0.25)
    explicit = await set_progress(
        client, job["id"], 95, estimatedCompletionAt="2031-05-06T07:08:09.010Z"
    )
    assert explicit["estimatedCompletionAt"] == "2031-05-06T07:08:09.010Z"
    done = await complete(client, job["id"])
    assert "estimatedCompletionAt" not in done
    other = await create_job(client, jobType="transcode-b")
    await set_progress(client, other["id"], 5)
    failed = await fail(client, other["id"])
    assert "estimatedCompletionAt" not in failed


async def test_without_history_progress_uses_the_plain_rate(client, db):
    job = await create_job(client, jobType="plain-rate")
    await set_progress(client, job["id"], 0)
    await _backdate_start(db, job["id"], 20)
    quarter = await set_progress(client, job["id"], 25)
    assert _eta_seconds(quarter) == pytest.approx(60, rel=0.02)  # (100-25) / (25/20 s)


async def test_reset_forgets_a_key_and_404s_after(client, db):
    await run_job(client, db, 1, workflowId="wf-reset")
    await run_job(client, db, 1, workflowId="wf-keep")
    listed = (await client.get("/eta")).json()
    assert [s["etaKey"] for s in listed["stats"]] == ["wf-keep", "wf-reset"]

    response = await client.delete("/eta/wf-reset")
    assert response.status_code == 200
    assert response.json() == {"deleted": True, "etaKey": "wf-reset"}
    error = assert_error(await stats_of(client, "wf-reset"), 404, "NOT_FOUND")
    assert error["details"] == {"etaKey": "wf-reset", "id": "wf-reset"}
    assert (await client.delete("/eta/wf-reset")).json() == {
        "deleted": False,
        "etaKey": "wf-reset",
    }
    assert [s["etaKey"] for s in (await client.get("/eta")).json()["stats"]] == ["wf-keep"]
    # History starts again from nothing.
    await run_job(client, db, 1, workflowId="wf-reset")
    assert (await stats_of(client, "wf-reset")).json()["count"] == 1


async def test_unknown_keys_404_and_malformed_keys_400(client):
    error = assert_error(await stats_of(client, "never-used"), 404, "NOT_FOUND")
    assert error["details"] == {"etaKey": "never-used", "id": "never-used"}
    assert (await client.get("/eta")).json() == {"stats": []}
    for bad in ("x" * 108, "a%01b"):  # a key is 1-100 characters, 107 with "#parent"
        assert_error(await client.get(f"/eta/{bad}"), 400, "VALIDATION_ERROR")
        assert_error(await client.delete(f"/eta/{bad}"), 400, "VALIDATION_ERROR")
    assert_error(await client.get("/eta/"), 400, "VALIDATION_ERROR")
    assert (await stats_of(client, "x" * 107)).status_code == 404


async def test_keys_with_any_characters_round_trip(client, db):
    key = "team/a b?#%&é✓ + 100%"
    await run_job(client, db, 1, workflowId=key)
    response = await stats_of(client, key)
    assert response.status_code == 200, response.text
    assert response.json()["etaKey"] == key
    assert (await client.delete(f"/eta/{quote(key, safe='')}")).json()["deleted"] is True


async def test_stats_are_isolated_by_app_and_mode(server, client, keys, db, database_url):
    await run_job(client, db, 1, workflowId="wf-private")
    other = await make_app(database_url)
    for key in (other.secret, other.public, keys.live_secret):
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {key}"}
        ) as c:
            assert (await c.get("/eta")).json() == {"stats": []}
            assert_error(await c.get("/eta/wf-private"), 404, "NOT_FOUND")
            if key != other.public:
                assert (await c.delete("/eta/wf-private")).json()["deleted"] is False
    assert (await stats_of(client, "wf-private")).json()["count"] == 1


async def test_public_keys_read_stats_but_cannot_reset(server, client, keys, db):
    await run_job(client, db, 1, workflowId="wf-public")
    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers=keys.auth(keys.public)
    ) as public:
        assert (await public.get("/eta")).json()["stats"][0]["etaKey"] == "wf-public"
        assert (await public.get("/eta/wf-public")).json()["count"] == 1
        assert_error(await public.delete("/eta/wf-public"), 403, "FORBIDDEN")
    assert (await stats_of(client, "wf-public")).json()["count"] == 1
    async with httpx.AsyncClient(base_url=f"{server.url}/v1") as anonymous:
        assert_error(await anonymous.get("/eta"), 401, "UNAUTHORIZED")


async def test_only_completed_jobs_feed_the_statistics(client, db):
    failed = await create_job(client, jobType="flaky")
    await set_progress(client, failed["id"], 40)
    await fail(client, failed["id"])
    cancelled = await create_job(client, jobType="flaky")
    assert (await client.post(f"/jobs/{cancelled['id']}/cancel", json={})).status_code == 200
    assert_error(await stats_of(client, "flaky"), 404, "NOT_FOUND")
    never_started = await create_job(client, jobType="flaky")
    await complete(client, never_started["id"])  # counts from its creation
    assert (await stats_of(client, "flaky")).json()["count"] == 1


async def test_concurrent_completions_of_one_key_leave_exact_counts(client):
    jobs = await asyncio.gather(*(create_job(client, workflowId="wf-race") for _ in range(50)))
    await asyncio.gather(*(set_progress(client, j["id"], 50) for j in jobs))
    done = await asyncio.gather(*(complete(client, j["id"]) for j in jobs))
    assert {j["status"] for j in done} == {"completed"}
    stats = (await stats_of(client, "wf-race")).json()
    assert stats["count"] == 50
    assert stats["minDuration"] <= stats["p50Duration"] <= stats["maxDuration"]


async def test_parents_get_an_eta_and_feed_their_own_key(client, db):
    parent = await create_parent(client, 2)
    first = await create_child(client, parent, 0)
    second = await create_child(client, parent, 1)
    await set_progress(client, first["id"], 0)
    await _backdate_start(db, parent["id"], 10)
    await set_progress(client, first["id"], 50)  # parent at 25 % after 10 s
    shown = (await client.get(f"/jobs/{parent['id']}")).json()
    assert shown["progress"] == 25
    assert _eta_seconds(shown) == pytest.approx(30, rel=0.05)
    await complete(client, first["id"])
    await set_progress(client, second["id"], 10)
    await complete(client, second["id"])
    finished = (await client.get(f"/jobs/{parent['id']}")).json()
    assert finished["status"] == "completed" and "estimatedCompletionAt" not in finished
    assert (await stats_of(client, "batch#parent")).json()["count"] == 1
    assert (await stats_of(client, "batch")).status_code == 404
    assert (await stats_of(client, "image")).json()["count"] == 2


@pytest.mark.parametrize("last", ["complete", "fail", "cancel"])
async def test_a_parent_finished_by_its_last_child_keeps_no_eta(client, db, last):
    key = f"wf-parent-eta-{last}"
    for _ in range(5):  # history for the parents' key: estimates now carry a confidence
        done = await create_parent(client, 1, workflowId=key)
        await run_job(client, db, 10, parentJobId=done["id"], childIndex=0, userId=done["userId"])
    assert (await stats_of(client, f"{key}#parent")).json()["count"] == 5
    parent = await create_parent(client, 2, workflowId=key)
    assert {"estimatedCompletionAt", "etaConfidence", "etaBasedOn"} <= parent.keys()
    first = await create_child(client, parent, 0)
    second = await create_child(client, parent, 1)
    await set_progress(client, first["id"], 50)
    running = (await client.get(f"/jobs/{parent['id']}")).json()
    assert running["status"] == "running" and "etaConfidence" in running
    await complete(client, first["id"])
    if last == "complete":
        await complete(client, second["id"])
    elif last == "fail":
        await fail(client, second["id"])
    else:
        assert (await client.post(f"/jobs/{second['id']}/cancel")).status_code == 200
    finished = (await client.get(f"/jobs/{parent['id']}")).json()
    assert finished["status"] == "completed"
    assert finished["progress"] == (100 if last == "complete" else 50)
    assert not {"estimatedCompletionAt", "etaConfidence", "etaBasedOn"} & finished.keys()


async def test_a_batchs_parent_and_children_of_one_type_keep_separate_statistics(client, db):
    # createBatch gives the parent and its children one jobType: a whole batch (about 3000 s)
    # must not become a sample for one child (about 200 s), nor the other way round. Long
    # enough that the seconds this test itself takes on a busy machine do not count.
    early = await create_job(client, jobType="render", totalChildren=2)  # before any history
    assert "estimatedCompletionAt" not in early
    for _ in range(5):
        parent = await create_job(client, jobType="render", totalChildren=2)
        for index in range(2):
            child = await create_child(client, parent, index, jobType="render")
            await set_progress(client, child["id"], 10)
            await _backdate_start(db, child["id"], 200)
            if index == 1:
                await _backdate_start(db, parent["id"], 3000)
            await complete(client, child["id"])
        done = (await client.get(f"/jobs/{parent['id']}")).json()
        assert done["status"] == "completed"
    children = (await stats_of(client, "render")).json()
    parents = (await stats_of(client, "render#parent")).json()
    assert children["count"] == 10 and children["maxDuration"] < 500_000
    assert parents["count"] == 5 and parents["minDuration"] > 2_900_000
    listed = [s["etaKey"] for s in (await client.get("/eta")).json()["stats"]]
    assert listed == ["render", "render#parent"]
    # Each kind of job is estimated from its own history.
    parent = await create_job(client, jobType="render", totalChildren=2)
    child = await create_child(client, parent, 0, jobType="render")
    assert _eta_seconds(parent, "createdAt") == pytest.approx(3000, rel=0.1)
    assert parent["etaBasedOn"] == 5
    assert _eta_seconds(child, "createdAt") == pytest.approx(200, rel=0.2)
    assert child["etaBasedOn"] == 10
    # As its children move, the parent's estimate still draws on the parents' history.
    await set_progress(client, child["id"], 50)
    moved = (await client.get(f"/jobs/{parent['id']}")).json()
    assert moved["progress"] == 25 and moved["etaBasedOn"] == 5
    # So does that of a parent created before there was any: its first estimate comes from
    # the statistics its key has when its children move.
    early_child = await create_child(client, early, 0, jobType="render")
    await set_progress(client, early_child["id"], 50)
    early = (await client.get(f"/jobs/{early['id']}")).json()
    assert early["progress"] == 25 and early["etaBasedOn"] == 5
    # Resetting one leaves the other.
    assert (await client.delete("/eta/render%23parent")).json()["deleted"] is True
    assert (await stats_of(client, "render")).json()["count"] == 10


async def test_a_cold_type_estimates_from_creation_on_its_first_report(client, db):
    # No history, no estimatedDuration, and a worker whose first report is already 20 %.
    job = await create_job(client, jobType="no-zero-report")
    assert "estimatedCompletionAt" not in job
    await _backdate_creation(db, job["id"], 80)
    first = await set_progress(client, job["id"], 20)
    assert _eta_seconds(first) == pytest.approx(320, rel=0.05)  # 20 % in 80 s since creation
    assert "etaConfidence" not in first
    await complete(client, job["id"])
    stats = (await stats_of(client, "no-zero-report")).json()
    assert stats["avgDuration"] == pytest.approx(80_000, rel=0.05)  # counted from creation


async def test_statistics_count_processing_and_a_pending_job_adds_the_queue_wait(client, db):
    # Workers that report 0 % as they start: 50 s in the queue, then 100 s of processing
    # (long enough that the time this test takes on a busy machine does not count).
    for _ in range(5):
        job = await create_job(client, jobType="queued")
        await _backdate_creation(db, job["id"], 150)
        await set_progress(client, job["id"], 0)  # starts now, 150 s after creation ...
        await _backdate_start(db, job["id"], 100)  # ... make that 100 s ago: 50 s of wait
        await set_progress(client, job["id"], 50)
        await complete(client, job["id"])
    stats = (await stats_of(client, "queued")).json()
    assert stats["avgDuration"] == pytest.approx(100_000, rel=0.05)
    assert stats["maxDuration"] < 110_000  # no queue wait in the statistics
    pending = await create_job(client, jobType="queued")
    assert _eta_seconds(pending, "createdAt") == pytest.approx(150, rel=0.05)
    assert pending["etaBasedOn"] == 5 and 0 < pending["etaConfidence"] <= 1
    started = await set_progress(client, pending["id"], 0)
    assert _eta_seconds(started) == pytest.approx(100, rel=0.05)


async def test_a_completions_sample_places_the_deciles_it_crossed_since_its_last_report(client, db):
    job = await create_job(client, jobType="late-finish")
    await set_progress(client, job["id"], 0)  # starts now ...
    await _backdate_start(db, job["id"], 100)  # ... make that 100 s ago
    await set_progress(client, job["id"], 50)  # 50 % at 100 s
    await _backdate_run(db, job["id"], 900)  # that report was 900 s ago
    await complete(client, job["id"])  # 1000 s in all
    profile = await _folded_profile(db, "late-finish")
    assert profile[0] == pytest.approx(1_000_000, rel=0.01)
    assert profile[1:] == pytest.approx(LATE_FINISH, abs=15)


async def test_a_parents_sample_places_the_deciles_its_last_child_crossed(client, db):
    parent = await create_parent(client, 2, workflowId="late-batch")
    first = await create_child(client, parent, 0)
    second = await create_child(client, parent, 1)
    await set_progress(client, first["id"], 0)  # the parent starts now ...
    await _backdate_start(db, parent["id"], 100)  # ... make that 100 s ago
    await complete(client, first["id"])  # the parent is at 50 % at 100 s
    await _backdate_run(db, parent["id"], 900)  # that was 900 s ago
    await complete(client, second["id"])  # the parent completes: 1000 s in all
    profile = await _folded_profile(db, "late-batch#parent")
    assert profile[0] == pytest.approx(1_000_000, rel=0.01)
    assert profile[1:] == pytest.approx(LATE_FINISH, abs=15)
