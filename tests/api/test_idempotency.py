"""``Idempotency-Key`` on POSTs: stored with the write, replayed on retry, never run twice."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from typing import Any

import asyncpg
import httpx
import orjson

from app.api.idempotency import request_hash
from tests.conftest import AppKeys, make_app
from tests.support.harness import ServerProcess
from tests.support.helpers import assert_error, create_job, create_parent

BODY = {"jobType": "video-generation", "userId": "user_1", "title": "Render"}


def new_key() -> str:
    return f"retry-{secrets.token_hex(8)}"


async def post(
    client: httpx.AsyncClient, path: str, body: Any, key: str, **headers: str
) -> httpx.Response:
    """POST ``body`` as JSON (None: no body at all) with ``Idempotency-Key: key``."""
    headers = {"Idempotency-Key": key, **headers}
    if body is None:
        return await client.post(path, headers=headers)
    return await client.post(path, json=body, headers=headers)


async def job_count(db: asyncpg.Connection, app_id: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM jobs WHERE app_id = $1", app_id))


async def event_count(db: asyncpg.Connection, job_id: str, event: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM events WHERE job_id = $1 AND event = $2", job_id, event
        )
    )


async def test_retry_with_the_same_key_replays_the_first_response_and_creates_nothing(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    key = new_key()
    first = await post(client, "/jobs", BODY, key)
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    retry = await post(client, "/jobs", BODY, key)
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.headers["content-type"] == "application/json"
    assert retry.content == first.content
    assert "X-RateLimit-Remaining" in retry.headers
    assert await job_count(db, keys.app_id) == 1
    assert await event_count(db, first.json()["id"], "job.started") == 1


async def test_the_response_is_stored_with_the_write(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    key = new_key()
    first = await post(client, "/jobs", BODY, key)
    row = await db.fetchrow(
        "SELECT * FROM idempotency_keys WHERE app_id = $1 AND mode = 'test' AND key = $2",
        keys.app_id,
        key,
    )
    assert row is not None
    assert row["status_code"] == 201
    assert bytes(row["response"]) == first.content
    canonical = orjson.dumps(BODY, option=orjson.OPT_SORT_KEYS)
    expected = hashlib.sha256(b"POST\n/v1/jobs\n" + canonical).digest()
    assert bytes(row["request_hash"]) == expected


async def test_every_post_endpoint_replays_byte_for_byte_and_applies_once(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    jobs = [await create_job(client) for _ in range(4)]
    parent = await create_parent(client, 2)
    calls = [
        (f"/jobs/{jobs[0]['id']}/progress", {"progress": 40, "message": "m"}, "job.progress"),
        (f"/jobs/{jobs[1]['id']}/complete", {"result": {"url": "u"}}, "job.completed"),
        (f"/jobs/{jobs[2]['id']}/fail", {"error": {"code": "E", "message": "m"}}, "job.failed"),
        (f"/jobs/{jobs[3]['id']}/cancel", {}, "job.cancelled"),
        (f"/jobs/{parent['id']}/cancel", None, "job.cancelled"),
    ]
    for path, body, event in calls:
        key = new_key()
        first = await post(client, path, body, key)
        assert first.status_code == 200, (path, first.text)
        retry = await post(client, path, body, key)
        assert retry.status_code == 200, (path, retry.text)
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.content == first.content, path
        assert await event_count(db, first.json()["id"], event) == 1, path
    # The stored response is rendered by convention (see app.api.idempotency.rendered):
    # a new POST route must be added here so that its replays are checked too.
    document = (await client.get(f"{client.base_url.copy_with(path='/openapi.json')}")).json()
    posts = {p for p, item in document["paths"].items() if "post" in item}
    covered = {"/v1" + re.sub("[0-9A-Z]{26}", "{job_id}", path) for path, _, _ in calls}
    token = {"userId": "user_1", "deviceId": "d", "token": "ab" * 32}
    registrations = [
        ("/devices/live-activity", {**token, "jobId": jobs[0]["id"]}),
        ("/devices", {**token, "platform": "ios"}),
    ]
    for path, body in registrations:
        key = new_key()
        first = await post(client, path, body, key)
        retry = await post(client, path, body, key)
        assert (first.status_code, retry.status_code) == (201, 201), (path, first.text)
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.content == first.content, path
        covered.add("/v1" + path)
    key = new_key()  # a retried mint gets the same token
    first = await post(client, "/tokens", {"userId": "user_1", "expiresIn": 60}, key)
    retry = await post(client, "/tokens", {"userId": "user_1", "expiresIn": 60}, key)
    assert (first.status_code, retry.status_code) == (200, 200), first.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    covered.add("/v1/tokens")
    assert posts == covered | {"/v1/jobs"}


async def test_same_key_with_a_different_body_is_409_and_changes_nothing(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    key = new_key()
    first = await post(client, "/jobs", BODY, key)
    assert first.status_code == 201
    reused = await post(client, "/jobs", {**BODY, "title": "Another"}, key)
    error = assert_error(reused, 409, "IDEMPOTENCY_KEY_REUSED")
    assert error["details"] == {"idempotencyKey": key}
    assert error["message"] == "This Idempotency-Key was already used for a different request"
    other_path = await post(client, f"/jobs/{first.json()['id']}/progress", {"progress": 5}, key)
    assert_error(other_path, 409, "IDEMPOTENCY_KEY_REUSED")
    assert await job_count(db, keys.app_id) == 1
    assert (await client.get(f"/jobs/{first.json()['id']}")).json()["progress"] == 0


async def test_the_same_json_in_another_key_order_or_spacing_is_the_same_request(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    key = new_key()
    body = {**BODY, "metadata": {"b": 1, "a": [1, 2]}}
    first = await post(client, "/jobs", body, key)
    reordered = orjson.dumps(dict(reversed(list(body.items())))).replace(b",", b" ,  ")
    retry = await client.post(
        "/jobs",
        content=reordered,
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    assert retry.status_code == 201, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert request_hash("POST", "/v1/jobs", reordered) == request_hash(
        "POST", "/v1/jobs", orjson.dumps(body)
    )


async def test_keys_are_scoped_per_app_and_mode(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    key = new_key()
    test_mode = await post(client, "/jobs", BODY, key)
    live_mode = await post(client, "/jobs", BODY, key, Authorization=f"Bearer {keys.live_secret}")
    assert test_mode.status_code == live_mode.status_code == 201
    assert "Idempotent-Replayed" not in live_mode.headers
    assert live_mode.json()["id"] != test_mode.json()["id"]


async def test_another_app_using_the_same_key_gets_its_own_write_not_a_replay(
    server: ServerProcess, client: httpx.AsyncClient, keys: AppKeys, database_url: str
) -> None:
    """Keys are scoped per app: app B sending app A's key (same body) runs its own write."""
    key = new_key()
    mine = await post(client, "/jobs", BODY, key)
    assert mine.status_code == 201, mine.text
    other = await make_app(database_url)
    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers=other.auth(), timeout=30
    ) as other_client:
        theirs = await post(other_client, "/jobs", BODY, key)
        assert theirs.status_code == 201, theirs.text
        assert "Idempotent-Replayed" not in theirs.headers
        assert theirs.json()["id"] != mine.json()["id"]
        # Each app reads its own job only; the other app's stays invisible to it.
        assert (await other_client.get(f"/jobs/{theirs.json()['id']}")).status_code == 200
        assert (await other_client.get(f"/jobs/{mine.json()['id']}")).status_code == 404
        # A different body under the same key is not a reuse across apps either.
        second = await post(other_client, "/jobs", {**BODY, "title": "B"}, new_key())
        assert second.status_code == 201
        reuse = await post(other_client, "/jobs", {**BODY, "title": "Other"}, key)
        assert_error(reuse, 409, "IDEMPOTENCY_KEY_REUSED")  # B's own first use binds it
    retry = await post(client, "/jobs", BODY, key)
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == mine.content


async def test_concurrent_identical_requests_with_one_key_execute_once(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    key = new_key()
    responses = await asyncio.gather(*(post(client, "/jobs", BODY, key) for _ in range(20)))
    assert [r.status_code for r in responses] == [201] * 20
    assert len({r.content for r in responses}) == 1
    fresh = [r for r in responses if "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1
    assert await job_count(db, keys.app_id) == 1
    assert await event_count(db, fresh[0].json()["id"], "job.started") == 1


async def test_concurrent_different_requests_with_one_key_one_wins_the_rest_get_409(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    key = new_key()
    bodies = [{**BODY, "title": f"T{i % 2}"} for i in range(16)]
    responses = await asyncio.gather(*(post(client, "/jobs", b, key) for b in bodies))
    assert await job_count(db, keys.app_id) == 1
    fresh = [
        r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    ]
    assert len(fresh) == 1
    winner = fresh[0]
    for body, response in zip(bodies, responses, strict=True):
        if body["title"] == winner.json()["title"]:
            assert response.status_code == 201 and response.content == winner.content
        else:
            assert_error(response, 409, "IDEMPOTENCY_KEY_REUSED")


async def test_a_write_that_fails_is_not_stored_and_a_retry_runs_it(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await create_job(client)
    key = new_key()
    await db.execute(
        "UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = $1", job["id"]
    )
    failed = await post(client, f"/jobs/{job['id']}/progress", {"progress": 30}, key)
    assert_error(failed, 404, "NOT_FOUND")
    stored = await db.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE app_id = $1 AND key = $2", keys.app_id, key
    )
    assert stored == 0
    await db.execute(
        "UPDATE jobs SET expires_at = now() + interval '1 hour' WHERE id = $1", job["id"]
    )
    retry = await post(client, f"/jobs/{job['id']}/progress", {"progress": 30}, key)
    assert retry.status_code == 200, retry.text
    assert "Idempotent-Replayed" not in retry.headers
    assert retry.json()["progress"] == 30


async def test_a_record_older_than_24_hours_no_longer_binds_the_key(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    key = new_key()
    first = await post(client, "/jobs", BODY, key)
    await db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
        " WHERE app_id = $1 AND key = $2",
        keys.app_id,
        key,
    )
    later = await post(client, "/jobs", {**BODY, "title": "Next day"}, key)
    assert later.status_code == 201, later.text
    assert "Idempotent-Replayed" not in later.headers
    assert later.json()["id"] != first.json()["id"]
    replay = await post(client, "/jobs", {**BODY, "title": "Next day"}, key)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.content == later.content


async def raw_post(url: str, auth: str, key: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST with an arbitrary header value, bytes as given (httpx refuses some on purpose)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n"
        b"Authorization: Bearer " + auth.encode() + b"\r\n"
        b"Content-Type: application/json\r\nIdempotency-Key: " + key + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(payload)


async def test_malformed_keys_are_rejected_with_400_and_nothing_is_written(
    server: ServerProcess, client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    # (Other control characters never reach the app: the HTTP parser refuses the request.)
    bad = [b"", b"   ", b"x" * 256, "caf\u00e9".encode(), b"a\tb", b"\xff\xfe"]
    for key in bad:
        status, body = await raw_post(server.url, keys.secret, key, orjson.dumps(BODY))
        assert status == 400, (key, body)
        assert body["error"]["code"] == "VALIDATION_ERROR", key
        assert body["error"]["details"] == {
            "errors": [{"field": "Idempotency-Key", "message": body["error"]["message"]}]
        }, key
    assert await job_count(db, keys.app_id) == 0
    longest = await post(client, "/jobs", BODY, "k" * 255)
    assert longest.status_code == 201
    printable = await post(client, "/jobs", BODY, "".join(chr(c) for c in range(0x21, 0x7F)))
    assert printable.status_code == 201


async def test_gets_ignore_the_header(client: httpx.AsyncClient, keys: AppKeys) -> None:
    job = await create_job(client)
    for _ in range(2):
        response = await client.get(f"/jobs/{job['id']}", headers={"Idempotency-Key": "g"})
        assert response.status_code == 200
        assert "Idempotent-Replayed" not in response.headers


# --- the records themselves (app/db/idempotency_repository.py), on the real database --------


async def test_a_record_binds_its_key_up_to_and_including_the_cutoff_instant(
    database_url, keys, db
):
    from datetime import UTC, datetime, timedelta

    from app.db.engine import create_engine
    from app.db.idempotency_repository import IdempotencyRepository
    from app.db.repository import Owner
    from app.settings import Settings

    owner = Owner(keys.app_id, "test")
    key, first, second = new_key(), b"1" * 32, b"2" * 32
    t0 = datetime.now(UTC)
    engine = create_engine(database_url, Settings(database_url=database_url))
    try:
        async with engine.begin() as conn:
            assert await IdempotencyRepository(conn).claim(owner, key, first, t0, t0) is None
            await IdempotencyRepository(conn).record(owner, key, 201, b'{"id":"a"}')
        async with engine.begin() as conn:
            # Created exactly at the cutoff: not older than the retention, still bound.
            stored = await IdempotencyRepository(conn).claim(owner, key, second, t0, t0)
            assert stored is not None
            assert (stored.request_hash, stored.status_code, stored.body) == (
                first,
                201,
                b'{"id":"a"}',
            )
        async with engine.begin() as conn:
            # A microsecond later it has expired: the key is taken over, reset to unfinished.
            later = t0 + timedelta(microseconds=1)
            assert await IdempotencyRepository(conn).claim(owner, key, second, later, later) is None
        found = await db.fetch(
            "SELECT request_hash, status_code FROM idempotency_keys WHERE app_id = $1 AND key = $2",
            keys.app_id,
            key,
        )
        assert [tuple(r) for r in found] == [(second, 0)]
    finally:
        await engine.dispose()


async def test_recording_a_response_touches_only_its_own_key_app_and_mode(database_url, keys):
    from datetime import UTC, datetime

    from app.db.engine import create_engine
    from app.db.idempotency_repository import IdempotencyRepository
    from app.db.repository import Owner
    from app.settings import Settings

    other = await make_app(database_url)
    key, sibling = new_key(), new_key()
    claims = [
        (Owner(keys.app_id, "test"), key),
        (Owner(keys.app_id, "test"), sibling),  # same app and mode, another key
        (Owner(keys.app_id, "live"), key),  # same app and key, the other mode
        (Owner(other.app_id, "test"), key),  # same key and mode, another app
    ]
    now = datetime.now(UTC)
    engine = create_engine(database_url, Settings(database_url=database_url))
    try:
        async with engine.begin() as conn:
            repo = IdempotencyRepository(conn)
            for owner, k in claims:
                assert await repo.claim(owner, k, b"h" * 32, now, now) is None
            await repo.record(claims[0][0], key, 200, b"{}")
        async with engine.begin() as conn:
            repo = IdempotencyRepository(conn)
            codes = [(await repo.claim(o, k, b"h" * 32, now, now)).status_code for o, k in claims]
        assert codes == [200, 0, 0, 0]
    finally:
        await engine.dispose()


async def test_a_record_left_unfinished_answers_409_in_use_and_changes_nothing(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection, database_url: str
) -> None:
    from datetime import UTC, datetime

    from app.db.engine import create_engine
    from app.db.idempotency_repository import IdempotencyRepository
    from app.db.repository import Owner
    from app.settings import Settings

    key = new_key()
    digest = request_hash("POST", "/v1/jobs", orjson.dumps(BODY))
    engine = create_engine(database_url, Settings(database_url=database_url))
    try:
        async with engine.begin() as conn:  # claimed, and committed with no response
            now = datetime.now(UTC)
            claimed = await IdempotencyRepository(conn).claim(
                Owner(keys.app_id, "test"), key, digest, now, now
            )
            assert claimed is None
    finally:
        await engine.dispose()
    error = assert_error(await post(client, "/jobs", BODY, key), 409, "IDEMPOTENCY_KEY_IN_USE")
    assert error["details"] == {"idempotencyKey": key}
    assert error["message"] == "The first request with this Idempotency-Key has not finished"
    assert await job_count(db, keys.app_id) == 0


async def test_a_key_too_long_is_a_validation_error_naming_the_header(
    client: httpx.AsyncClient,
) -> None:
    error = assert_error(await post(client, "/jobs", BODY, "k" * 256), 400, "VALIDATION_ERROR")
    message = "Idempotency-Key must be 1 to 255 printable ASCII characters"
    assert error["message"] == message
    assert error["details"] == {"errors": [{"field": "Idempotency-Key", "message": message}]}
