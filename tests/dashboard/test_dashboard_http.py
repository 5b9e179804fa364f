"""Dashboard sessions and CSRF over plain HTTP (no browser), and /docs without a CDN."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime

import httpx

from app.domain.views import JOB_FIELDS, job_view
from tests.conftest import AppKeys
from tests.support.harness import running_server
from tests.support.helpers import assert_error, create_job


async def _signed_in(server, key: str) -> tuple[httpx.AsyncClient, str]:
    """A client holding a dashboard session cookie, and the page's CSRF token."""
    c = httpx.AsyncClient(base_url=server.url)
    answer = await c.post("/dashboard/login", data={"apiKey": key})
    assert answer.status_code == 303, answer.text
    page = await c.get("/dashboard")
    assert page.status_code == 200
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token
    return c, token.group(1)


async def test_root_redirects_and_pages_need_a_session(server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        root = await c.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/dashboard"
        for path in ("/dashboard", "/dashboard/eta", "/dashboard/keys"):
            answer = await c.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login"
        assert_error(await c.get("/dashboard/events"), 401, "UNAUTHORIZED")
        login = await c.get("/dashboard/login")
        assert 'name="apiKey"' in login.text
        assert "frame-ancestors 'none'" in login.headers["content-security-policy"]


async def test_state_changes_need_the_csrf_token_and_a_same_origin(
    server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    job = await create_job(client)
    c, token = await _signed_in(server, keys.secret)
    async with aclosing(c):
        cancel = f"/dashboard/jobs/{job['id']}/cancel"
        missing = await c.post(cancel)
        assert missing.status_code == 403 and "CSRF" in missing.text
        wrong = await c.post(cancel, data={"csrf": token[:-2] + "xx"})
        assert wrong.status_code == 403
        foreign = await c.post(
            cancel, data={"csrf": token}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403 and "Cross-site" in foreign.text
        assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "pending"
        # Sign-out is protected too: without the token the session lives on.
        assert (await c.post("/dashboard/logout")).status_code == 403
        assert (await c.get("/dashboard")).status_code == 200

        same = await c.post(cancel, data={"csrf": token}, headers={"Origin": server.url})
        assert same.status_code == 303
        assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "cancelled"
        again = await c.post(cancel, data={"csrf": token})
        assert again.status_code == 400 and "INVALID_JOB_STATE" in again.text


async def test_a_login_from_another_origin_is_refused(server, keys: AppKeys) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        answer = await c.post(
            "/dashboard/login",
            data={"apiKey": keys.secret},
            headers={"Origin": "https://evil.example"},
        )
        assert answer.status_code == 403
        assert "seenn_dashboard" not in answer.headers.get("set-cookie", "")


async def test_a_revoked_key_ends_its_sessions(server, keys: AppKeys, db) -> None:
    c, _token = await _signed_in(server, keys.public)
    async with aclosing(c):
        await db.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE app_id = $1 AND kind = 'public'",
            keys.app_id,
        )
        assert (await c.get("/dashboard")).status_code == 303


async def test_the_event_feed_sends_the_watched_jobs_first(
    server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    job = await create_job(client, title="Watched")
    c, _token = await _signed_in(server, keys.public)
    async with (
        aclosing(c),
        c.stream("GET", "/dashboard/events", params={"watch": job["id"]}) as stream,
    ):
        assert stream.status_code == 200
        seen: list[str] = []
        async for line in stream.aiter_lines():
            seen.append(line)
            if line.startswith("data:") and job["id"] in line:
                break
        assert "event: connected" in seen and "event: job.sync" in seen


async def test_docs_load_swagger_ui_from_this_server(server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        html = (await c.get("/docs")).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/static/swagger-ui/") for a in assets), assets
        assert "cdn" not in html.lower()
        for asset in assets:
            assert (await c.get(asset)).status_code == 200
        licence = await c.get("/static/swagger-ui/LICENSE")
        assert "Apache License" in licence.text
        assert (await c.get("/redoc")).status_code == 404


async def test_signing_out_ends_the_sessions_open_live_feed(
    database_url: str, workdir, keys: AppKeys
) -> None:
    """The feed re-reads its session every heartbeat period, and says goodbye once it is gone."""
    env = {"SEENN_SSE_HEARTBEAT_SECONDS": "0.2"}
    with running_server(database_url, workdir / "logs-feed", env=env) as server:
        c, token = await _signed_in(server, keys.secret)
        async with aclosing(c), c.stream("GET", "/dashboard/events") as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == "event: connected"
            assert (await c.post("/dashboard/logout", data={"csrf": token})).status_code == 303
            rest = [line async for line in lines]  # ends: the server closes the stream
        assert "event: session.ended" in rest


async def _events(lines: AsyncIterator[str], until: str) -> list[tuple[str, str]]:
    """(event, data) pairs read from a stream's ``lines`` up to the first whose data holds
    ``until``."""
    seen: list[tuple[str, str]] = []
    name = ""
    async for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            seen.append((name, line[6:]))
            if until in line:
                return seen
    raise AssertionError(f"the stream ended before {until}: {seen}")


async def test_the_feed_first_sends_jobs_newer_than_the_pages_newest(
    server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    shown = await create_job(client, title="On the page")
    newer = [await create_job(client, title=f"Newer {i}") for i in range(2)]
    child_parent = await create_job(client, title="Parent", totalChildren=1)
    c, _token = await _signed_in(server, keys.public)
    params = {"after": shown["id"]}
    async with aclosing(c), c.stream("GET", "/dashboard/events", params=params) as stream:
        seen = await _events(stream.aiter_lines(), child_parent["id"])
    synced = [data for name, data in seen if name == "job.sync"]
    ids = [next(j["id"] for j in [*newer, child_parent] if j["id"] in d) for d in synced]
    assert ids == [newer[0]["id"], newer[1]["id"], child_parent["id"]]  # oldest first
    assert not any(shown["id"] in data for _, data in seen)


async def test_a_session_works_on_every_replica_and_the_feed_hears_other_replicas(
    server, database_url: str, workdir, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    """Signed in on one replica, live on another: a job written through the first reaches
    the second's dashboard feed (NOTIFY wakes its hub)."""
    c, _token = await _signed_in(server, keys.secret)
    cookie = {"seenn_dashboard": c.cookies["seenn_dashboard"]}
    await c.aclose()
    with running_server(database_url, workdir / "logs-replica") as other:
        async with (
            httpx.AsyncClient(base_url=other.url, cookies=cookie, timeout=30) as there,
            there.stream("GET", "/dashboard/events") as stream,
        ):
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert await anext(lines) == "event: connected"
            job = await create_job(client, title="Written on the first replica")
            seen = await _events(lines, job["id"])
    assert seen[-1][0] == "job.started"


async def test_eta_page_keeps_a_batchs_parent_apart_from_its_children(
    server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    # One jobType for the parent and its child (as createBatch sends them): the parent's
    # statistics and its accuracy figure are under "<type>#parent", the child's under the type.
    parent = await create_job(client, jobType="pdf", totalChildren=1)
    child = await create_job(
        client, jobType="pdf", parentJobId=parent["id"], childIndex=0, userId=parent["userId"]
    )
    for value in (10, 50):  # the parent starts with the first report, has an ETA at the next
        answer = await client.post(f"/jobs/{child['id']}/progress", json={"progress": value})
        assert answer.is_success
    assert (await client.post(f"/jobs/{child['id']}/complete", json={})).is_success
    c, _ = await _signed_in(server, keys.secret)
    async with aclosing(c):
        page = (await c.get("/dashboard/eta")).text
    rows = {
        key: row for key, row in re.findall(r'<tr data-eta-key="([^"]+)">(.*?)</tr>', page, re.S)
    }
    assert set(rows) == {"pdf", "pdf#parent"}
    assert "n=1" in rows["pdf"] and "n=1" in rows["pdf#parent"]


def test_the_field_order_the_live_page_restores_is_the_one_job_view_gives() -> None:
    """A row with every optional column set: job_view's keys come in JOB_FIELDS' order."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    row = {
        "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "app_id": "a",
        "user_id": "u",
        "job_type": "t",
        "title": "T",
        "status": "running",
        "progress": 5,
        "workflow_id": "w",
        "message": "m",
        "queue": {"position": 1},
        "stage": {"name": "s"},
        "result": {"r": 1},
        "error": {"code": "E"},
        "metadata": {"k": 1},
        "retryable": True,
        "eta_confidence": 0.5,
        "eta_based_on": 3,
        "estimated_completion_at": now,
        "started_at": now,
        "completed_at": now,
        "created_at": now,
        "updated_at": now,
        "expires_at": now,
        "parent_job_id": "01ARZ3NDEKTSV4RRFFQ69G5FAW",
        "child_index": 0,
        "total_children": 2,
        "completed_children": 0,
        "failed_children": 0,
        "running_children": 1,
        "cancelled_children": 0,
        "child_progress_sum": 5,
        "child_progress_mode": "average",
    }
    assert list(job_view(row)) == list(JOB_FIELDS)
