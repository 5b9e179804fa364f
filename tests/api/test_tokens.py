"""Subscriber tokens: minted with a secret key, read one user's jobs, refreshed in-band."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time

import asyncpg
import httpx
import jwt
import orjson
import pytest

from app.domain import tokens
from tests.conftest import AppKeys, make_app
from tests.support.harness import ROOT, ServerProcess, running_server
from tests.support.helpers import assert_error, create_child, create_job, create_parent, progress
from tests.support.sse_client import open_sse


async def mint(server: ServerProcess, key: str, user_id: str, **fields: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", timeout=30) as c:
        return await c.post(
            "/tokens",
            json={"userId": user_id, **fields},
            headers={"Authorization": f"Bearer {key}"},
        )


async def token_for(server: ServerProcess, keys: AppKeys, user_id: str, **fields: object) -> str:
    response = await mint(server, keys.secret, user_id, **fields)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**os.environ, "SEENN_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


async def test_minting_needs_a_secret_key(server, keys, client) -> None:
    made = await mint(server, keys.secret, "u_mint", expiresIn=60)
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["tokenType"] == "Bearer" and body["userId"] == "u_mint"
    assert body["expiresIn"] == 60 and "jobIds" not in body
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["app"] == keys.app_id and claims["mode"] == "test"
    assert claims["exp"] - claims["iat"] == 60
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "HS256" and header["kid"]

    assert_error(await mint(server, keys.public, "u_mint"), 403, "FORBIDDEN")
    assert_error(await mint(server, body["token"], "u_mint"), 403, "FORBIDDEN")
    async with httpx.AsyncClient(base_url=f"{server.url}/v1") as anon:
        assert_error(await anon.post("/tokens", json={"userId": "u"}), 401, "UNAUTHORIZED")
    live = await mint(server, keys.live_secret, "u_mint")
    assert live.status_code == 200
    live_claims = jwt.decode(live.json()["token"], options={"verify_signature": False})
    assert live_claims["mode"] == "live"
    # The lifetime defaults to the setting (900 s in the test server).
    assert live.json()["expiresIn"] == 900


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"userId": ""},
        {"userId": "u\x01"},
        {"userId": 5},
        {"userId": "u", "expiresIn": 0},
        {"userId": "u", "expiresIn": 901},
        {"userId": "u", "expiresIn": "60"},
        {"userId": "u", "jobIds": []},
        {"userId": "u", "jobIds": ["not-a-ulid"]},
        {"userId": "u", "jobIds": ["01HZZZZZZZZZZZZZZZZZZZZZZZ"] * 101},
    ],
)
async def test_bad_mint_requests_get_400(server, keys, body) -> None:
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", headers=keys.auth()) as c:
        assert_error(await c.post("/tokens", json=body), 400, "VALIDATION_ERROR")


async def test_a_token_sees_only_its_user(server, keys, client) -> None:
    mine = await create_job(client, userId="u_me")
    parent = await create_parent(client, 1, userId="u_me")
    await create_child(client, parent, 0)
    theirs = await create_job(client, userId="u_them")
    their_parent = await create_parent(client, 1, userId="u_them")
    token = await token_for(server, keys, "u_me")
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", headers=bearer(token)) as c:
        assert (await c.get(f"/jobs/{mine['id']}")).json()["id"] == mine["id"]
        listed = (await c.get("/jobs", params={"userId": "u_me"})).json()["jobs"]
        assert {j["userId"] for j in listed} == {"u_me"} and len(listed) == 3
        assert (await c.get(f"/jobs/{parent['id']}/children")).status_code == 200
        error = assert_error(await c.get(f"/jobs/{theirs['id']}"), 404, "NOT_FOUND")
        assert error["details"] == {"id": theirs["id"]}  # exactly as a missing job
        assert_error(await c.get("/jobs", params={"userId": "u_them"}), 404, "NOT_FOUND")
        assert_error(await c.get(f"/jobs/{their_parent['id']}/children"), 404, "NOT_FOUND")
        assert_error(await c.get("/sse", params={"userId": "u_them"}), 404, "NOT_FOUND")
        # Writes stay with secret keys.
        assert_error(
            await c.post(f"/jobs/{mine['id']}/progress", json={"progress": 5}), 403, "FORBIDDEN"
        )

    async with open_sse(server.url, {"userId": "u_me", "access_token": token}) as s:
        assert (await s.next()).event == "connected"
        await progress(client, theirs["id"], 10)
        await progress(client, mine["id"], 20)
        (event,) = await s.take(1)
        assert event.data["id"] == mine["id"] and event.data["progress"] == 20


async def test_a_token_for_some_jobs_sees_only_those_and_their_children(
    server, keys, client
) -> None:
    listed = await create_job(client, userId="u_some")
    parent = await create_parent(client, 1, userId="u_some")
    child = await create_child(client, parent, 0)
    other = await create_job(client, userId="u_some")
    token = await token_for(server, keys, "u_some", jobIds=[listed["id"], parent["id"]])
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", headers=bearer(token)) as c:
        for job in (listed, parent, child):
            assert (await c.get(f"/jobs/{job['id']}")).status_code == 200
        assert_error(await c.get(f"/jobs/{other['id']}"), 404, "NOT_FOUND")
        page = (await c.get("/jobs", params={"userId": "u_some", "limit": 2})).json()
        rest = (
            await c.get("/jobs", params={"userId": "u_some", "cursor": page["nextCursor"]})
        ).json()
        seen = [j["id"] for j in page["jobs"] + rest["jobs"]]
        assert sorted(seen) == sorted([listed["id"], parent["id"], child["id"]])
        assert_error(await c.get("/sse", params={"userId": "u_some"}), 404, "NOT_FOUND")
        assert_error(
            await c.get("/sse", params={"userId": "u_some", "jobId": other["id"]}), 404, "NOT_FOUND"
        )
    params = {"userId": "u_some", "jobId": parent["id"], "access_token": token}
    async with open_sse(server.url, params) as s:
        assert (await s.next()).event == "connected"
        await progress(client, other["id"], 10)
        await progress(client, child["id"], 30)
        events = await s.take(1)
        assert events[0].data["id"] == child["id"]


def forge(payload: dict[str, object], secret: bytes, kid: str, alg: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=alg, headers={"kid": kid})


async def signing_key(db: asyncpg.Connection) -> tuple[str, bytes]:
    row = await db.fetchrow(
        "SELECT kid, secret FROM signing_keys WHERE retired_at IS NULL"
        " ORDER BY created_at DESC, kid DESC LIMIT 1"
    )
    return row["kid"], row["secret"]


async def test_expired_forged_and_foreign_tokens_are_refused(
    server, keys, client, db, database_url
) -> None:
    job = await create_job(client, userId="u_ref")
    good = await token_for(server, keys, "u_ref")
    kid, secret = await signing_key(db)
    now = int(time.time())
    claims = jwt.decode(good, options={"verify_signature": False})
    expired, _ = tokens.mint(kid, secret, keys.app_id, "test", "u_ref", None, 60, now=now - 120)
    head, body, sig = good.split(".")
    other_app = {**claims, "app": "someone-else"}
    tampered = ".".join(
        [head, base64.urlsafe_b64encode(orjson.dumps(other_app)).decode().rstrip("="), sig]
    )
    refused = {
        "expired": expired,
        "bad signature": forge(claims, secrets.token_bytes(32), kid),
        "tampered claims": tampered,
        "truncated signature": good[:-2],
        "unknown kid": forge(claims, secret, "01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
        "no exp": forge({k: v for k, v in claims.items() if k != "exp"}, secret, kid),
        "not a subscriber token": forge({**claims, "typ": "other"}, secret, kid),
        "jobs not a list": forge({**claims, "jobs": "all"}, secret, kid),
        "garbage": "a.b.c",
    }
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", timeout=30) as c:
        assert (await c.get(f"/jobs/{job['id']}", headers=bearer(good))).status_code == 200
        for name, token in refused.items():
            for response in (
                await c.get(f"/jobs/{job['id']}", headers=bearer(token)),
                await c.get("/jobs", params={"userId": "u_ref"}, headers=bearer(token)),
                await c.get("/sse", params={"userId": "u_ref", "access_token": token}),
            ):
                error = assert_error(response, 401, "UNAUTHORIZED")
                if name == "expired":
                    assert "expired" in error["message"]

        # Valid tokens of another app, or of the other mode, see nothing of this app.
        other = await make_app(database_url)
        foreign = {
            "another app": await token_for(server, other, "u_ref"),
            "another mode": (await mint(server, keys.live_secret, "u_ref")).json()["token"],
        }
        for token in foreign.values():
            assert_error(await c.get(f"/jobs/{job['id']}", headers=bearer(token)), 404, "NOT_FOUND")
            listed = await c.get("/jobs", params={"userId": "u_ref"}, headers=bearer(token))
            assert listed.status_code == 200 and listed.json()["jobs"] == []


async def test_a_stream_is_told_before_its_token_expires_and_resumes_losslessly(
    server, keys, client
) -> None:
    job = await create_job(client, userId="u_exp")
    made = (await mint(server, keys.secret, "u_exp", expiresIn=8)).json()
    expires_at = jwt.decode(made["token"], options={"verify_signature": False})["exp"]
    async with open_sse(server.url, {"userId": "u_exp", "access_token": made["token"]}) as s:
        assert (await s.next()).event == "connected"
        await progress(client, job["id"], 10)
        (seen,) = await s.take(1)
        idle = await s.next(wait=30)
        assert idle is not None and idle.event == "connection.idle", idle
        assert idle.data["reason"] == "token_expired"
        assert time.time() < expires_at, "the goodbye must come before the token expires"
        assert await s.next(wait=10) is None  # then the server closes the stream
    # Events written while the client is away, fetching a new token.
    for value in (20, 30, 40):
        await progress(client, job["id"], value)
    fresh = await token_for(server, keys, "u_exp")
    params = {"userId": "u_exp", "lastEventId": str(seen.id)}
    async with open_sse(server.url, params, bearer(fresh)) as s:  # the header works too
        assert (await s.next()).event == "connected"
        missed = await s.take(3)
    assert [m.data["progress"] for m in missed] == [20, 30, 40]
    assert [int(m.id) for m in missed] == [int(seen.id) + 1, int(seen.id) + 2, int(seen.id) + 3]


async def test_rotation_keeps_old_tokens_valid_until_they_expire(
    server, keys, client, db, database_url, workdir
) -> None:
    job = await create_job(client, userId="u_rot")
    old = await token_for(server, keys, "u_rot")
    rotated = cli("signing-keys", "rotate", database_url=database_url)
    new_kid = rotated.stdout.strip()
    new = await token_for(server, keys, "u_rot")
    assert jwt.get_unverified_header(new)["kid"] == new_kid
    assert jwt.get_unverified_header(old)["kid"] != new_kid
    listing = cli("signing-keys", "list", database_url=database_url).stdout
    assert f"{new_kid}" in listing and "retired" in listing

    # A second replica verifies what the first minted, before and after the rotation.
    with running_server(database_url, workdir / "replica2") as replica:
        async with httpx.AsyncClient(timeout=30) as c:
            for url in (server.url, replica.url):
                for token in (old, new):
                    response = await c.get(f"{url}/v1/jobs/{job['id']}", headers=bearer(token))
                    assert response.status_code == 200, response.text

    # Once a retired key is older than the longest token life, it verifies nothing.
    old_kid = jwt.get_unverified_header(old)["kid"]
    await db.execute(
        "UPDATE signing_keys SET retired_at = now() - interval '901 seconds' WHERE kid = $1",
        old_kid,
    )
    async with httpx.AsyncClient(base_url=f"{server.url}/v1") as c:
        assert_error(await c.get(f"/jobs/{job['id']}", headers=bearer(old)), 401, "UNAUTHORIZED")
        assert (await c.get(f"/jobs/{job['id']}", headers=bearer(new))).status_code == 200

        # A leaked key: rotate with --revoke-previous and its tokens are refused at once.
        cli("signing-keys", "rotate", "--revoke-previous", database_url=database_url)
        assert_error(await c.get(f"/jobs/{job['id']}", headers=bearer(new)), 401, "UNAUTHORIZED")
        newest = await token_for(server, keys, "u_rot")
        assert (await c.get(f"/jobs/{job['id']}", headers=bearer(newest))).status_code == 200


async def test_a_token_only_app_refuses_reads_by_public_key(
    server, keys, client, database_url
) -> None:
    job = await create_job(client, userId="u_only")
    token = await token_for(server, keys, "u_only")
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", timeout=30) as c:
        pk = keys.auth(keys.public)
        assert (await c.get(f"/jobs/{job['id']}", headers=pk)).status_code == 200
        assert (
            "token-only off"
            in cli("apps", "show", "--app", keys.app_id, database_url=database_url).stdout
        )

        cli("apps", "set", "--app", keys.app_id, "--token-only", "on", database_url=database_url)
        assert (
            "token-only on"
            in cli("apps", "show", "--app", keys.app_id, database_url=database_url).stdout
        )
        assert_error(await c.get(f"/jobs/{job['id']}", headers=pk), 403, "FORBIDDEN")
        assert_error(
            await c.get("/jobs", params={"userId": "u_only"}, headers=pk), 403, "FORBIDDEN"
        )
        refused = await c.get("/sse", params={"userId": "u_only", "apiKey": keys.public})
        assert_error(refused, 403, "FORBIDDEN")
        assert (await c.get(f"/jobs/{job['id']}", headers=bearer(token))).status_code == 200
        assert (await c.get(f"/jobs/{job['id']}", headers=keys.auth())).status_code == 200

        cli("apps", "set", "--app", keys.app_id, "--token-only", "off", database_url=database_url)
        assert (await c.get(f"/jobs/{job['id']}", headers=pk)).status_code == 200


async def test_the_dashboard_takes_no_token_and_drops_a_token_only_apps_public_key(
    server, keys, database_url
) -> None:
    token = await token_for(server, keys, "u_dash")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        refused = await c.post("/dashboard/login", data={"apiKey": token})
        assert refused.status_code == 401 and "was not accepted" in refused.text
        assert "seenn_dashboard" not in refused.headers.get("set-cookie", "")

        signed_in = await c.post("/dashboard/login", data={"apiKey": keys.public})
        assert signed_in.status_code == 303, signed_in.text
        assert (await c.get("/dashboard")).status_code == 200
        token_only = ("apps", "set", "--app", keys.app_id, "--token-only")
        cli(*token_only, "on", database_url=database_url)
        try:
            page = await c.get("/dashboard")  # the session reads nothing any more
            assert page.status_code == 303 and page.headers["location"] == "/dashboard/login"
            again = await c.post("/dashboard/login", data={"apiKey": keys.public})
            assert again.status_code == 403 and "subscriber tokens" in again.text
        finally:
            cli(*token_only, "off", database_url=database_url)


async def test_each_users_tokens_have_their_own_rate_limit(database_url, workdir, keys) -> None:
    env = {"SEENN_RATE_LIMIT_PER_SECOND": "0.01", "SEENN_RATE_LIMIT_BURST": "3"}
    with running_server(database_url, workdir / "token-limits", env=env) as limited:
        async with httpx.AsyncClient(base_url=f"{limited.url}/v1", timeout=30) as c:
            minted = []
            for user in ("u_a", "u_b"):
                response = await c.post("/tokens", json={"userId": user}, headers=keys.auth())
                minted.append(response.json()["token"])
            first, second = (bearer(t) for t in minted)
            for _ in range(3):
                assert (await c.get("/jobs", params={"userId": "u_a"}, headers=first)).is_success
            refused = await c.get("/jobs", params={"userId": "u_a"}, headers=first)
            assert_error(refused, 429, "RATE_LIMITED")
            # Another user's token, and the app's public key, have buckets of their own.
            assert (await c.get("/jobs", params={"userId": "u_b"}, headers=second)).is_success
            pk = keys.auth(keys.public)
            assert (await c.get("/jobs", params={"userId": "u_a"}, headers=pk)).is_success
