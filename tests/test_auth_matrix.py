"""Who may call what: every ``/v1`` endpoint against every bad or foreign credential.

The operations come from the server's own OpenAPI document, so a new endpoint fails
``test_every_documented_operation_is_in_the_matrix`` until it is added here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from app.domain.keys import generate_key
from tests.conftest import AppKeys, make_app
from tests.harness import ServerProcess, create_key
from tests.helpers import complete, create_child, create_job, create_parent

USER = "matrix_user"
JOB_TYPE = "auth-matrix"


@dataclass
class World:
    """App A's data, which nobody but A's keys may see or change."""

    keys: AppKeys
    job: dict[str, Any]
    parent: dict[str, Any]
    eta_key: str


Request = tuple[str, str, Any]  # method, path under /v1 (with query), JSON body or None
OPERATIONS: dict[tuple[str, str], Callable[[World], Request]] = {
    ("POST", "/v1/jobs"): lambda w: (
        "POST",
        "/jobs",
        {
            "jobType": "image",
            "userId": USER,
            "title": "c",
            "parentJobId": w.parent["id"],
            "childIndex": 1,
        },
    ),
    ("GET", "/v1/jobs"): lambda w: ("GET", f"/jobs?userId={USER}", None),
    ("GET", "/v1/jobs/{job_id}"): lambda w: ("GET", f"/jobs/{w.job['id']}", None),
    ("GET", "/v1/jobs/{job_id}/children"): lambda w: (
        "GET",
        f"/jobs/{w.parent['id']}/children",
        None,
    ),
    ("POST", "/v1/jobs/{job_id}/progress"): lambda w: (
        "POST",
        f"/jobs/{w.job['id']}/progress",
        {"progress": 10},
    ),
    ("POST", "/v1/jobs/{job_id}/complete"): lambda w: (
        "POST",
        f"/jobs/{w.job['id']}/complete",
        {},
    ),
    ("POST", "/v1/jobs/{job_id}/fail"): lambda w: (
        "POST",
        f"/jobs/{w.job['id']}/fail",
        {"error": {"code": "X", "message": "m"}},
    ),
    ("POST", "/v1/jobs/{job_id}/cancel"): lambda w: (
        "POST",
        f"/jobs/{w.job['id']}/cancel",
        {},
    ),
    ("GET", "/v1/eta"): lambda w: ("GET", "/eta", None),
    ("GET", "/v1/eta/{eta_key}"): lambda w: ("GET", f"/eta/{w.eta_key}", None),
    ("DELETE", "/v1/eta/{eta_key}"): lambda w: ("DELETE", f"/eta/{w.eta_key}", None),
    ("GET", "/v1/sse"): lambda w: ("GET", f"/sse?userId={USER}", None),
    ("POST", "/v1/devices/live-activity"): lambda w: (
        "POST",
        "/devices/live-activity",
        {"userId": USER, "deviceId": "d1", "jobId": w.job["id"], "token": "ab" * 32},
    ),
    ("DELETE", "/v1/devices/live-activity"): lambda w: (
        "DELETE",
        "/devices/live-activity",
        {"userId": USER, "deviceId": "d1", "jobId": w.job["id"]},
    ),
    ("POST", "/v1/devices"): lambda w: (
        "POST",
        "/devices",
        {"userId": USER, "deviceId": "d1", "platform": "ios", "token": "cd" * 32},
    ),
    ("DELETE", "/v1/devices"): lambda w: (
        "DELETE",
        "/devices",
        {"userId": USER, "deviceId": "d1"},
    ),
    ("GET", "/v1/jobs/{job_id}/pushes"): lambda w: ("GET", f"/jobs/{w.job['id']}/pushes", None),
}
STREAMING = {("GET", "/v1/sse")}  # opened only with credentials that must fail
# The apps register their own push tokens with their public key.
PUBLIC_WRITES = {
    ("POST", "/v1/devices/live-activity"),
    ("DELETE", "/v1/devices/live-activity"),
    ("POST", "/v1/devices"),
    ("DELETE", "/v1/devices"),
}
SECRET_READS = {("GET", "/v1/jobs/{job_id}/pushes")}  # push debugging: secret keys only


@pytest.fixture
async def anon(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", timeout=30) as c:
        yield c


@pytest.fixture
async def world(client: httpx.AsyncClient, keys: AppKeys) -> World:
    job = await create_job(client, userId=USER, jobType=JOB_TYPE)
    parent = await create_parent(client, 2, userId=USER)
    await create_child(client, parent, 0)
    done = await create_job(client, userId=USER, jobType=JOB_TYPE)
    await complete(client, done["id"])
    assert (await client.get(f"/eta/{JOB_TYPE}")).status_code == 200
    # A's own registrations, which no foreign key may change or remove.
    for path, body in (
        ("/devices/live-activity", OPERATIONS[("POST", "/v1/devices/live-activity")]),
        ("/devices", OPERATIONS[("POST", "/v1/devices")]),
    ):
        request = body(World(keys, job, parent, JOB_TYPE))[2]
        assert (await client.post(path, json=request)).status_code == 201
    return World(keys, job, parent, JOB_TYPE)


@pytest.fixture
async def operations(anon: httpx.AsyncClient) -> list[tuple[str, str]]:
    """The operations this server has: documented ones, plus SSE if it is routed."""
    document = (await anon.get(str(anon.base_url.copy_with(path="/openapi.json")))).json()
    ops = [
        (method.upper(), path)
        for path, item in document["paths"].items()
        if path.startswith("/v1/")
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]
    if ("GET", "/v1/sse") not in ops:
        probe = await anon.get("/sse", params={"userId": USER})
        if probe.status_code != 404:
            ops.append(("GET", "/v1/sse"))
    return ops


async def call(
    client: httpx.AsyncClient, world: World, op: tuple[str, str], headers: dict[str, str]
) -> httpx.Response:
    method, path, body = OPERATIONS[op](world)
    return await client.request(method, path, json=body, headers=headers)


def expect(response: httpx.Response, status: int, code: str, where: str, errors: list[str]) -> None:
    """Record a mismatch instead of stopping, so one run shows the whole matrix."""
    try:
        body = response.json()
        got = (response.status_code, body.get("error", {}).get("code"))
    except ValueError:
        got = (response.status_code, None)
    if got != (status, code):
        errors.append(f"{where}: expected {status} {code}, got {got}: {response.text[:200]}")


async def a_state(db: asyncpg.Connection, world: World) -> tuple[Any, ...]:
    """Everything of app A that a foreign or read-only key might try to change."""
    jobs = await db.fetch("SELECT * FROM jobs WHERE app_id = $1 ORDER BY id", world.keys.app_id)
    eta = await db.fetch(
        "SELECT eta_key, count FROM eta_stats WHERE app_id = $1", world.keys.app_id
    )
    return tuple(jobs), tuple(eta), await device_state(db, world)


async def device_state(db: asyncpg.Connection, world: World) -> tuple[Any, ...]:
    """App A's push tokens (a public key of A may change these; nobody else may)."""
    live = await db.fetch(
        "SELECT * FROM live_activity_tokens WHERE app_id = $1 ORDER BY device_id",
        world.keys.app_id,
    )
    devices = await db.fetch(
        "SELECT * FROM device_tokens WHERE app_id = $1 ORDER BY device_id", world.keys.app_id
    )
    return tuple(live), tuple(devices)


def test_every_documented_operation_is_in_the_matrix(operations: list[tuple[str, str]]) -> None:
    assert set(operations) <= set(OPERATIONS), set(operations) - set(OPERATIONS)
    assert ("POST", "/v1/jobs") in operations


async def test_missing_malformed_unknown_and_revoked_keys_get_401_everywhere(
    anon: httpx.AsyncClient,
    world: World,
    operations: list[tuple[str, str]],
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    revoked = await create_key(database_url, world.keys.app_id, "secret", "test")
    ok = await anon.get(f"/jobs/{world.job['id']}", headers={"Authorization": f"Bearer {revoked}"})
    assert ok.status_code == 200
    await db.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_hint = $1 AND app_id = $2",
        f"{revoked[:8]}...{revoked[-4:]}",
        world.keys.app_id,
    )
    secret = world.keys.secret
    credentials: dict[str, dict[str, str]] = {
        "none": {},
        "empty": {"Authorization": ""},
        "scheme only": {"Authorization": "Bearer"},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "token scheme": {"Authorization": f"Token {secret}"},
        "no scheme": {"Authorization": secret},
        "truncated": {"Authorization": f"Bearer {secret[:-1]}"},
        "extended": {"Authorization": f"Bearer {secret}x"},
        "bad mode": {"Authorization": f"Bearer sk_prod_{secret[-32:]}"},
        "two keys": {"Authorization": f"Bearer {secret} {secret}"},
        "injection": {"Authorization": "Bearer sk_test_' OR '1'='1' --"},
        "unknown": {"Authorization": f"Bearer {generate_key('secret', 'test')}"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
    }
    before = await a_state(db, world)
    errors: list[str] = []
    for op in operations:
        for name, headers in credentials.items():
            response = await call(anon, world, op, headers)
            expect(response, 401, "UNAUTHORIZED", f"{op} {name}", errors)
    assert not errors, "\n".join(errors)
    assert await a_state(db, world) == before


async def test_a_public_key_reads_but_gets_403_on_every_write(
    anon: httpx.AsyncClient,
    world: World,
    operations: list[tuple[str, str]],
    db: asyncpg.Connection,
) -> None:
    headers = world.keys.auth(world.keys.public)
    before = (await a_state(db, world))[:2]
    errors: list[str] = []
    for op in operations:
        if op in STREAMING:
            continue
        response = await call(anon, world, op, headers)
        if op in PUBLIC_WRITES:
            if response.status_code not in (200, 201):
                errors.append(f"{op}: a public key should register, got {response.text[:200]}")
        elif op[0] == "GET" and op not in SECRET_READS:
            if response.status_code != 200:
                errors.append(f"{op}: a public key should read, got {response.status_code}")
        else:
            expect(response, 403, "FORBIDDEN", str(op), errors)
    assert not errors, "\n".join(errors)
    assert (await a_state(db, world))[:2] == before


@pytest.mark.parametrize("intruder", ["another app", "another mode", "another app's public"])
async def test_keys_of_another_app_or_mode_see_and_change_nothing(
    anon: httpx.AsyncClient,
    world: World,
    operations: list[tuple[str, str]],
    database_url: str,
    db: asyncpg.Connection,
    intruder: str,
) -> None:
    other = await make_app(database_url)
    key = {
        "another app": other.secret,
        "another mode": world.keys.live_secret,
        "another app's public": other.public,
    }[intruder]
    headers = {"Authorization": f"Bearer {key}"}
    writes_forbidden = intruder == "another app's public"
    before = await a_state(db, world)
    errors: list[str] = []
    for op in operations:
        if op in STREAMING:
            continue
        body = OPERATIONS[op](world)[2]
        response = await call(anon, world, op, headers)
        where = f"{op} {intruder}"
        if op == ("DELETE", "/v1/devices"):  # the intruder's own registration (above), if any
            if response.status_code != 200:
                errors.append(f"{where}: expected 200, got {response.text[:200]}")
        elif op == ("DELETE", "/v1/devices/live-activity"):
            if response.status_code != 200 or response.json().get("deleted") is not False:
                errors.append(f"{where}: expected deleted=false, got {response.text[:200]}")
        elif op == ("POST", "/v1/devices"):  # registers a device of the intruder's own app
            if response.status_code != 201:
                errors.append(f"{where}: expected 201, got {response.text[:200]}")
        elif op in SECRET_READS and writes_forbidden:
            expect(response, 403, "FORBIDDEN", where, errors)
        elif writes_forbidden and op[0] != "GET" and op not in PUBLIC_WRITES:
            expect(response, 403, "FORBIDDEN", where, errors)
        elif op in (("GET", "/v1/jobs"), ("GET", "/v1/eta")):
            listed = response.json()
            if response.status_code != 200 or any(listed.values()):
                errors.append(f"{where}: expected an empty 200 list, got {response.text[:200]}")
        elif op == ("POST", "/v1/jobs"):
            expect(response, 400, "INVALID_PARENT", where, errors)
        elif op == ("DELETE", "/v1/eta/{eta_key}"):
            if response.status_code != 200 or response.json().get("deleted") is not False:
                errors.append(f"{where}: expected deleted=false, got {response.text[:200]}")
        else:
            expect(response, 404, "NOT_FOUND", where, errors)
            if ("{job_id}" in op[1] or "jobId" in (body or {})) and response.status_code == 404:
                if response.json()["error"].get("details", {}).get("id") is None:
                    errors.append(f"{where}: 404 without details.id")
    assert not errors, "\n".join(errors)
    assert await a_state(db, world) == before


@pytest.mark.parametrize("name", ["apiKey", "api_key", "key", "token", "access_token"])
async def test_a_key_in_the_query_string_is_refused_outside_sse(
    anon: httpx.AsyncClient,
    world: World,
    operations: list[tuple[str, str]],
    db: asyncpg.Connection,
    name: str,
) -> None:
    before = await a_state(db, world)
    errors: list[str] = []
    for op in operations:
        if op in STREAMING:
            continue
        method, path, body = OPERATIONS[op](world)
        joiner = "&" if "?" in path else "?"
        for key in (world.keys.secret, f"Bearer {world.keys.secret}"):
            url = f"{path}{joiner}{httpx.QueryParams({name: key})}"
            response = await anon.request(method, url, json=body)
            expect(response, 401, "UNAUTHORIZED", f"{op} ?{name}=", errors)
    assert not errors, "\n".join(errors)
    assert await a_state(db, world) == before
