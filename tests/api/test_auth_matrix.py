"""Who may call what: every ``/v1`` endpoint against every bad or foreign credential.

Every test runs the whole matrix below; a new documented endpoint fails
``test_the_matrix_is_exactly_the_routed_operations`` until it is added here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from app.domain.keys import generate_key
from tests.conftest import AppKeys, make_app
from tests.support.harness import ServerProcess, create_key
from tests.support.helpers import complete, create_child, create_job, create_parent
from tests.support.sse_client import open_sse

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
    ("POST", "/v1/tokens"): lambda w: ("POST", "/tokens", {"userId": USER}),
}
# opened and closed at once (tests/realtime/test_sse.py reads them)
STREAMING = {("GET", "/v1/sse")}
SSE_QUERY_KEYS = {"apiKey", "key", "access_token"}  # the stream's query-string credentials
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
def operations() -> list[tuple[str, str]]:
    """Every operation of the matrix: all of them are checked, documented or not."""
    return list(OPERATIONS)


async def documented(anon: httpx.AsyncClient) -> set[tuple[str, str]]:
    document = (await anon.get(str(anon.base_url.copy_with(path="/openapi.json")))).json()
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        if path.startswith("/v1/")
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }


async def call(
    client: httpx.AsyncClient, world: World, op: tuple[str, str], headers: dict[str, str]
) -> httpx.Response:
    method, path, body = OPERATIONS[op](world)
    if op in STREAMING:
        return await opened(client, method, path, headers)
    return await client.request(method, path, json=body, headers=headers)


async def opened(
    client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Open a stream and close it at once: its status and headers (and body unless 200)."""
    async with client.stream(method, url, headers=headers or {}) as r:
        body = await r.aread() if r.status_code != 200 else b""
        return httpx.Response(r.status_code, headers=r.headers, content=body)


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
        "SELECT eta_key, count FROM eta_stats WHERE app_id = $1"
        " UNION ALL SELECT eta_key, count(*) FROM eta_samples WHERE app_id = $1"
        " GROUP BY eta_key ORDER BY 1, 2",
        world.keys.app_id,
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


async def test_the_matrix_is_exactly_the_routed_operations(
    anon: httpx.AsyncClient, world: World
) -> None:
    """A new documented operation must join the matrix; one that leaves the document is
    still checked (every test runs the whole matrix) and must still be routed."""
    listed = await documented(anon)
    assert listed <= set(OPERATIONS), listed - set(OPERATIONS)
    assert ("POST", "/v1/jobs") in listed
    for op in set(OPERATIONS) - listed:  # undocumented, yet routed: it asks for a key
        expect_401 = await call(anon, world, op, {})
        assert expect_401.status_code == 401, (op, expect_401.text[:200])


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


@pytest.mark.parametrize("reader", ["public key", "subscriber token"])
async def test_a_public_key_or_token_reads_but_gets_403_on_every_write(
    anon: httpx.AsyncClient,
    world: World,
    operations: list[tuple[str, str]],
    db: asyncpg.Connection,
    reader: str,
) -> None:
    credential = world.keys.public
    if reader == "subscriber token":  # the world's user: every read is in its scope
        credential = await mint(anon, world.keys.secret, USER)
    headers = world.keys.auth(credential)
    before = (await a_state(db, world))[:2]
    errors: list[str] = []
    for op in operations:
        response = await call(anon, world, op, headers)
        if op in PUBLIC_WRITES:
            if response.status_code not in (200, 201):
                errors.append(f"{op}: a public key should register, got {response.text[:200]}")
        elif op[0] == "GET" and op not in SECRET_READS:
            if response.status_code != 200:
                errors.append(f"{op}: a {reader} should read, got {response.text[:200]}")
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
        body = OPERATIONS[op](world)[2]
        response = await call(anon, world, op, headers)
        where = f"{op} {intruder}"
        if op in STREAMING:
            expect_stream_of_nothing_of_a(response, where, errors)
        elif op == ("DELETE", "/v1/devices"):  # the intruder's own registration (above), if any
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
        elif op == ("POST", "/v1/tokens"):  # a token of the key's own app and mode
            claims = jwt.decode(response.json()["token"], options={"verify_signature": False})
            if (claims["app"], claims["mode"]) == (world.keys.app_id, "test"):
                errors.append(f"{where}: minted a token for app A's test mode")
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
    # The intruder's stream of the same user id carries nothing of app A: its own write
    # (the sentinel) is the first event it gets; A's unfinished jobs are never synced.
    writer = world.keys.live_secret if intruder == "another mode" else other.secret
    async with open_sse(anon_url(anon), {"userId": USER}, headers) as stream:
        assert (await stream.next()).event == "connected"
        async with httpx.AsyncClient(
            base_url=str(anon.base_url), headers={"Authorization": f"Bearer {writer}"}
        ) as own:
            sentinel = await create_job(own, userId=USER)
        first = await stream.next(wait=30)
    assert first is not None and (first.event, first.data["jobId"]) == (
        "job.started",
        sentinel["id"],
    ), first


def anon_url(client: httpx.AsyncClient) -> str:
    return str(client.base_url.copy_with(path="")).rstrip("/")


def expect_stream_of_nothing_of_a(response: httpx.Response, where: str, errors: list[str]) -> None:
    """A foreign key opens its own stream (200): what it carries is checked separately."""
    if response.status_code != 200:
        errors.append(f"{where}: expected a stream of its own, got {response.status_code}")


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
        method, path, body = OPERATIONS[op](world)
        joiner = "&" if "?" in path else "?"
        for key in (world.keys.secret, f"Bearer {world.keys.secret}"):
            url = f"{path}{joiner}{httpx.QueryParams({name: key})}"
            if op not in STREAMING:
                response = await anon.request(method, url, json=body)
            elif name in SSE_QUERY_KEYS and key == world.keys.secret:
                # EventSource cannot send headers: the stream takes a bare key here.
                response = await opened(anon, method, url)
                if response.status_code != 200:
                    errors.append(f"{op} ?{name}=: expected 200, got {response.text[:200]}")
                continue
            else:
                response = await opened(anon, method, url)
            expect(response, 401, "UNAUTHORIZED", f"{op} ?{name}=", errors)
    assert not errors, "\n".join(errors)
    assert await a_state(db, world) == before


# --- subscriber tokens ---------------------------------------------------------------------

USER_READS = {  # reads of USER's jobs: out of a token's scope they are 404
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/jobs/{job_id}/children"),
    ("GET", "/v1/sse"),
}


async def mint(anon: httpx.AsyncClient, secret: str, user_id: str, **fields: Any) -> str:
    response = await anon.post(
        "/tokens", json={"userId": user_id, **fields}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


@pytest.mark.parametrize("scope", ["another user", "another job", "another app", "another mode"])
async def test_a_token_out_of_scope_sees_and_changes_nothing(
    anon: httpx.AsyncClient,
    world: World,
    operations: list[tuple[str, str]],
    database_url: str,
    db: asyncpg.Connection,
    scope: str,
) -> None:
    if scope == "another user":
        token = await mint(anon, world.keys.secret, "someone_else")
    elif scope == "another job":  # USER's, but only a job that is not the world's
        other = await create_job_for(anon, world.keys)
        token = await mint(anon, world.keys.secret, USER, jobIds=[other])
    elif scope == "another app":
        token = await mint(anon, (await make_app(database_url)).secret, USER)
    else:
        token = await mint(anon, world.keys.live_secret, USER)
    headers = {"Authorization": f"Bearer {token}"}
    own_user = scope in ("another user", "another job")  # app A's token, outside its scope
    before = await a_state(db, world)
    errors: list[str] = []
    for op in operations:
        if op in STREAMING and not own_user:
            continue  # USER's stream of the token's own app: it would stay open, empty
        response = await call(anon, world, op, headers)
        where = f"{op} {scope}"
        live_activity = op[1] == "/v1/devices/live-activity"
        if op in SECRET_READS:
            expect(response, 403, "FORBIDDEN", where, errors)
        elif op in PUBLIC_WRITES and (scope == "another user" or op[0] == "POST" and live_activity):
            expect(response, 404, "NOT_FOUND", where, errors)  # another user, or A's job
        elif op in PUBLIC_WRITES and live_activity:  # DELETE: A's job is out of scope
            if scope == "another job":
                expect(response, 404, "NOT_FOUND", where, errors)
            elif response.status_code != 200 or response.json().get("deleted") is not False:
                errors.append(f"{where}: expected deleted=false, got {response.text[:200]}")
        elif op in PUBLIC_WRITES:  # the token's own user's device, in its own app
            if response.status_code != (201 if op[0] == "POST" else 200):
                errors.append(f"{where}: expected the device call to pass: {response.text[:200]}")
        elif op[0] != "GET":
            expect(response, 403, "FORBIDDEN", where, errors)
        elif op == ("GET", "/v1/jobs") and scope == "another job":
            listed = {j["id"] for j in response.json().get("jobs", [])}
            if response.status_code != 200 or world.job["id"] in listed:
                errors.append(f"{where}: listed out-of-scope jobs: {response.text[:200]}")
        elif op in USER_READS and own_user:
            expect(response, 404, "NOT_FOUND", where, errors)
        elif op[1].startswith("/v1/eta") and own_user:
            if response.status_code != 200:  # app-wide statistics: no user's data
                errors.append(f"{where}: expected 200, got {response.text[:200]}")
        elif op in (("GET", "/v1/jobs"), ("GET", "/v1/eta")):
            listed = response.json()
            if response.status_code != 200 or any(listed.values()):
                errors.append(f"{where}: expected an empty 200 list, got {response.text[:200]}")
        else:
            expect(response, 404, "NOT_FOUND", where, errors)
    assert not errors, "\n".join(errors)
    after = await a_state(db, world)
    if scope == "another job":  # its user's devices are in its scope: jobs and ETA are not
        after, before = after[:2], before[:2]
    assert after == before


async def create_job_for(anon: httpx.AsyncClient, keys: AppKeys) -> str:
    body = {"jobType": "other", "userId": USER, "title": "t"}
    response = await anon.post("/jobs", json=body, headers=keys.auth())
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_refused_tokens_get_401_everywhere(
    anon: httpx.AsyncClient,
    world: World,
    operations: list[tuple[str, str]],
    db: asyncpg.Connection,
) -> None:
    good = await mint(anon, world.keys.secret, USER)
    claims = jwt.decode(good, options={"verify_signature": False})
    kid = jwt.get_unverified_header(good)["kid"]
    secret = await db.fetchval("SELECT secret FROM signing_keys WHERE kid = $1", kid)
    expired = {**claims, "iat": claims["iat"] - 3600, "exp": claims["iat"] - 1800}
    head, _, sig = good.split(".")
    credentials = {
        "expired": jwt.encode(expired, secret, algorithm="HS256", headers={"kid": kid}),
        "bad signature": jwt.encode(claims, b"x" * 32, algorithm="HS256", headers={"kid": kid}),
        "foreign payload": ".".join([head, mint_payload(claims), sig]),
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
        "dots only": "..",
    }
    before = await a_state(db, world)
    errors: list[str] = []
    for op in operations:
        for name, token in credentials.items():
            response = await call(anon, world, op, {"Authorization": f"Bearer {token}"})
            expect(response, 401, "UNAUTHORIZED", f"{op} {name}", errors)
            if op in STREAMING:
                query = await anon.get("/sse", params={"userId": USER, "access_token": token})
                expect(query, 401, "UNAUTHORIZED", f"{op} ?access_token {name}", errors)
    assert not errors, "\n".join(errors)
    assert await a_state(db, world) == before


def mint_payload(claims: dict[str, Any]) -> str:
    """The token's claims for another app, base64url: a payload its signature does not fit."""
    import base64

    import orjson

    forged = {**claims, "app": "another-app"}
    return base64.urlsafe_b64encode(orjson.dumps(forged)).decode().rstrip("=")
