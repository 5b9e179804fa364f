"""Device registrations: the Flutter SDK's Live Activity calls, and generic device tokens."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from tests.conftest import AppKeys, make_app
from tests.support.harness import ServerProcess
from tests.support.helpers import assert_error, create_job

TOKEN = "80a3" * 40  # ActivityKit push tokens are hex; the apps send them as such


async def raw_request(server: ServerProcess, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``request`` byte for byte on a new connection; the status and JSON body."""
    parts = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
        length = int(headers.get(b"content-length", b"0"))
        body = await reader.readexactly(length)
        return status, json.loads(body)
    finally:
        writer.close()


def dart_http(method: str, host: str, key: str, body: dict[str, Any]) -> bytes:
    """What package:http (dart:io HttpClient) sends for ``http.post/delete(uri, headers:
    {'Authorization': ..., 'Content-Type': 'application/json'}, body: jsonEncode(map))``:
    jsonEncode has no spaces, and package:http adds ``charset=utf-8`` to the content type."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    return (
        f"{method} /v1/devices/live-activity HTTP/1.1\r\n"
        "user-agent: Dart/3.5 (dart:io)\r\n"
        "accept-encoding: gzip\r\n"
        f"content-length: {len(payload)}\r\n"
        f"authorization: Bearer {key}\r\n"
        f"host: {host}\r\n"
        "content-type: application/json; charset=utf-8\r\n"
        "\r\n"
    ).encode() + payload


async def tokens(db: asyncpg.Connection, app_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT user_id, device_id, job_id, token, activity_id FROM live_activity_tokens"
        " WHERE app_id = $1 ORDER BY device_id",
        app_id,
    )
    return [dict(r) for r in rows]


async def test_the_flutter_sdk_registers_and_removes_a_live_activity_token(
    server: ServerProcess, client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await create_job(client, userId="user_42")
    host = urlsplit(server.url).netloc
    register = {
        "userId": "user_42",
        "deviceId": "device_1769090000000",
        "jobId": job["id"],
        "token": TOKEN,
        "activityId": "8A1F6C2E-54B3-4D3A-9C1E-1A2B3C4D5E6F",
    }
    status, body = await raw_request(server, dart_http("POST", host, keys.public, register))
    assert status == 201, body
    assert body["registered"] is True and body["jobId"] == job["id"]
    assert "token" not in body  # a token is never echoed
    assert await tokens(db, keys.app_id) == [
        {
            "user_id": "user_42",
            "device_id": "device_1769090000000",
            "job_id": job["id"],
            "token": TOKEN,
            "activity_id": "8A1F6C2E-54B3-4D3A-9C1E-1A2B3C4D5E6F",
        }
    ]
    remove = {"userId": "user_42", "deviceId": "device_1769090000000", "jobId": job["id"]}
    status, body = await raw_request(server, dart_http("DELETE", host, keys.public, remove))
    assert status == 200, body
    assert body["deleted"] is True
    assert await tokens(db, keys.app_id) == []
    # Removing again still answers 200 (the SDK treats anything else as a failure).
    status, body = await raw_request(server, dart_http("DELETE", host, keys.public, remove))
    assert (status, body["deleted"]) == (200, False)


async def test_registering_again_replaces_the_token(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await create_job(client, userId="u")
    body = {"userId": "u", "deviceId": "d", "jobId": job["id"], "token": TOKEN, "activityId": "a"}
    pk = keys.auth(keys.public)
    assert (await client.post("/devices/live-activity", json=body, headers=pk)).status_code == 201
    new = {**body, "token": "FF" * 32, "activityId": "b"}
    assert (await client.post("/devices/live-activity", json=new, headers=pk)).status_code == 201
    rows = await tokens(db, keys.app_id)
    assert [(r["token"], r["activity_id"]) for r in rows] == [("ff" * 32, "b")]


async def test_a_token_registers_only_for_a_live_job_of_that_user(
    client: httpx.AsyncClient, keys: AppKeys, database_url: str, db: asyncpg.Connection
) -> None:
    job = await create_job(client, userId="owner")
    other = await make_app(database_url)
    base = {"deviceId": "d", "token": TOKEN, "activityId": "a"}
    cases = [
        (keys.public, {**base, "userId": "someone-else", "jobId": job["id"]}),
        (keys.secret, {**base, "userId": "someone-else", "jobId": job["id"]}),
        (keys.public, {**base, "userId": "owner", "jobId": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}),
        (other.public, {**base, "userId": "owner", "jobId": job["id"]}),
        (keys.live_secret, {**base, "userId": "owner", "jobId": job["id"]}),
    ]
    for key, body in cases:
        response = await client.post("/devices/live-activity", json=body, headers=keys.auth(key))
        error = assert_error(response, 404, "NOT_FOUND")
        assert error["details"]["id"] == body["jobId"]
    assert await tokens(db, keys.app_id) == []
    assert await tokens(db, other.app_id) == []


async def test_bad_registrations_get_the_envelope_and_change_nothing(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await create_job(client, userId="u")
    good = {"userId": "u", "deviceId": "d", "jobId": job["id"], "token": TOKEN}
    bad: list[Any] = [
        {k: v for k, v in good.items() if k != "token"},
        {**good, "token": "not hex at all, and spaces"},
        {**good, "token": "ab"},
        {**good, "userId": ""},
        {**good, "deviceId": "a\nb"},
        {**good, "jobId": "not-a-job-id"},
        {**good, "token": 12345},
        [good],
        "text",
    ]
    for body in bad:
        response = await client.post(
            "/devices/live-activity", json=body, headers=keys.auth(keys.public)
        )
        assert_error(response, 400, "VALIDATION_ERROR")
    response = await client.request(
        "DELETE", "/devices/live-activity", json={"userId": "u"}, headers=keys.auth(keys.public)
    )
    assert_error(response, 400, "VALIDATION_ERROR")
    response = await client.request("DELETE", "/devices/live-activity")  # no body at all
    assert_error(response, 400, "VALIDATION_ERROR")
    assert await tokens(db, keys.app_id) == []


async def test_a_token_goes_with_its_job(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await create_job(client, userId="u")
    body = {"userId": "u", "deviceId": "d", "jobId": job["id"], "token": TOKEN}
    assert (await client.post("/devices/live-activity", json=body)).status_code == 201
    await db.execute("DELETE FROM jobs WHERE id = $1", job["id"])  # what the sweeper does
    assert await tokens(db, keys.app_id) == []


async def test_device_tokens_register_replace_and_remove(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    pk = keys.auth(keys.public)
    ios = {"userId": "u", "deviceId": "iphone", "platform": "ios", "token": "AB" * 32}
    android = {
        "userId": "u",
        "deviceId": "pixel",
        "platform": "android",
        "token": "fcm:APA91bHx_y-0123",
    }
    for body in (ios, android, {**ios, "token": "cd" * 32}):
        response = await client.post("/devices", json=body, headers=pk)
        assert response.status_code == 201, response.text
        assert response.json()["platform"] == body["platform"]
    rows = await db.fetch(
        "SELECT device_id, platform, token FROM device_tokens WHERE app_id = $1 ORDER BY 1",
        keys.app_id,
    )
    assert [tuple(r) for r in rows] == [
        ("iphone", "ios", "cd" * 32),
        ("pixel", "android", android["token"]),
    ]
    for body in ({**ios, "platform": "windows"}, {**ios, "token": "fcm:APA91b-not-hex"}, {}):
        assert_error(await client.post("/devices", json=body, headers=pk), 400, "VALIDATION_ERROR")
    gone = await client.request("DELETE", "/devices", json={"userId": "u", "deviceId": "pixel"})
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    again = await client.request("DELETE", "/devices", json={"userId": "u", "deviceId": "pixel"})
    assert again.status_code == 200 and again.json()["deleted"] is False


async def test_a_jobs_pushes_are_listed_for_secret_keys_only(
    client: httpx.AsyncClient, keys: AppKeys
) -> None:
    job = await create_job(client, userId="u")
    response = await client.get(f"/jobs/{job['id']}/pushes")
    assert response.status_code == 200, response.text
    assert response.json() == {"jobId": job["id"], "pushes": []}
    denied = await client.get(f"/jobs/{job['id']}/pushes", headers=keys.auth(keys.public))
    assert_error(denied, 403, "FORBIDDEN")
    missing = await client.get("/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/pushes")
    assert assert_error(missing, 404, "NOT_FOUND")["details"]["id"] == "01ARZ3NDEKTSV4RRFFQ69G5FAV"


async def test_a_registration_with_an_idempotency_key_is_replayed(
    client: httpx.AsyncClient, keys: AppKeys
) -> None:
    body = {"userId": "u", "deviceId": "ipad", "platform": "ios", "token": "ef" * 32}
    headers = {**keys.auth(keys.public), "Idempotency-Key": "register-ipad-1"}
    first = await client.post("/devices", json=body, headers=headers)
    again = await client.post("/devices", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
