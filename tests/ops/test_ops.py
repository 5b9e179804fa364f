"""Operating the server: probes, Prometheus metrics, request ids, JSON logs and a graceful
stop on SIGTERM, all against real server processes and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.db.engine import plain_url
from app.db.migrate import head_revision
from tests.conftest import AppKeys
from tests.support.harness import ServerProcess, provision_database, running_server, start_server
from tests.support.helpers import assert_error, create_job, progress
from tests.support.sse_client import open_sse

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
WAIT = 15.0  # generous bound for anything that should take well under a second
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- helpers ------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[Any]], what: str, within: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def scrape(base_url: str) -> Samples:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        response = await c.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests_total(samples: Samples, method: str, route: str, status: int) -> float:
    return sample(
        samples, "seenn_http_requests_total", method=method, route=route, status=str(status)
    )


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line of the server's log, each of which must be one JSON object."""
    lines = []
    for line in server.log().splitlines():
        if line.strip():
            record = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= record.keys(), record
            lines.append(record)
    return lines


async def logged(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    """The first log record with all of ``fields``, waiting for it to be written."""

    async def find() -> dict[str, Any] | None:
        for record in log_lines(server):
            if all(record.get(k) == v for k, v in fields.items()):
                return record
        return None

    found: dict[str, Any] = await until(find, f"a log line with {fields}")
    return found


async def wait_for_lock_waiter(db: asyncpg.Connection) -> None:
    """Wait until a server backend of this database is blocked on a lock the test holds."""

    async def blocked() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND application_name = 'seenn-server' AND datname = current_database()"
            )
        )

    await until(blocked, "a request blocked on the row lock")


async def exit_code(server: ServerProcess, within: float) -> int:
    return await asyncio.to_thread(server.process.wait, within)


@pytest.fixture(scope="module")
def ops_server(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    """A server of this module's own (its metrics start at zero), logging every request."""
    with running_server(
        database_url, workdir / "ops-logs", env={"SEENN_LOG_LEVEL": "info"}
    ) as server:
        yield server


@pytest.fixture
async def ops_client(ops_server: ServerProcess, keys: AppKeys) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"{ops_server.url}/v1", headers=keys.auth(), timeout=30
    ) as c:
        yield c


# --- probes -------------------------------------------------------------------------------


async def test_healthz_answers_without_a_key(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        response = await c.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_when_the_schema_is_at_the_latest_migration(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        response = await c.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "schema": head_revision()}


async def test_probes_and_metrics_are_not_in_the_openapi_document(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
    assert not {"/healthz", "/readyz", "/metrics"} & set(paths)


async def test_readyz_fails_while_the_schema_is_behind_and_recovers_once_migrated(
    workdir: Path, tmp_path: Path
) -> None:
    """A database of its own, so the shared one keeps its schema."""
    url, _handle = await asyncio.to_thread(provision_database, workdir)
    conn = await asyncpg.connect(plain_url(url))
    try:
        await conn.execute("UPDATE alembic_version SET version_num = '0000_older'")
        env = {"SEENN_LOG_LEVEL": "info"}
        with running_server(url, tmp_path / "logs", env=env) as server:
            async with httpx.AsyncClient(base_url=server.url) as c:
                response = await c.get("/readyz", headers={"X-Request-ID": "ready-check-1"})
                error = assert_error(response, 503, "SERVICE_UNAVAILABLE")
                assert "0000_older" in error["message"], error
                assert response.headers["retry-after"] == "1"
                assert (await c.get("/healthz")).status_code == 200  # alive, just not ready
                # The warning logged while answering carries that request's id.
                warning = await logged(server, logger="app.api.health", level="WARNING")
                assert warning["request_id"] == "ready-check-1", warning
                await conn.execute("UPDATE alembic_version SET version_num = $1", head_revision())
                assert (await c.get("/readyz")).status_code == 200
    finally:
        await conn.close()


# --- metrics ------------------------------------------------------------------------------


async def test_request_metrics_use_the_route_template_never_the_raw_path(
    ops_server: ServerProcess, ops_client: httpx.AsyncClient
) -> None:
    before = await scrape(ops_server.url)
    job = await create_job(ops_client)
    for _ in range(2):
        assert (await ops_client.get(f"/jobs/{job['id']}")).status_code == 200
    missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    assert (await ops_client.get(f"/jobs/{missing}")).status_code == 404
    stray = f"no-such-{secrets.token_hex(4)}"
    assert (await ops_client.get(f"/{stray}/x")).status_code == 404
    assert (await ops_client.delete(f"/jobs/{job['id']}/progress")).status_code == 405

    after = await scrape(ops_server.url)
    template = "/v1/jobs/{job_id}"
    assert (
        requests_total(after, "GET", template, 200) - requests_total(before, "GET", template, 200)
        == 2
    )
    assert (
        requests_total(after, "GET", template, 404) - requests_total(before, "GET", template, 404)
        == 1
    )
    assert (
        requests_total(after, "POST", "/v1/jobs", 201)
        - requests_total(before, "POST", "/v1/jobs", 201)
        == 1
    )
    assert (
        requests_total(after, "GET", "unmatched", 404)
        - requests_total(before, "GET", "unmatched", 404)
        == 1
    )
    wrong_method = "/v1/jobs/{job_id}/progress"
    assert (
        requests_total(after, "DELETE", wrong_method, 405)
        - requests_total(before, "DELETE", wrong_method, 405)
        == 1
    )
    count = "seenn_http_request_duration_seconds_count"
    seconds = "seenn_http_request_duration_seconds_sum"
    observed = sample(after, count, method="GET", route=template) - sample(
        before, count, method="GET", route=template
    )
    assert observed == 3
    spent = sample(after, seconds, method="GET", route=template) - sample(
        before, seconds, method="GET", route=template
    )
    assert 0 < spent < 3 * WAIT
    labels = {value for (_name, pairs) in after for _key, value in pairs}
    assert not any(job["id"] in v or missing in v or stray in v for v in labels), labels


async def test_sse_and_event_metrics_follow_a_subscriber(
    ops_server: ServerProcess, ops_client: httpx.AsyncClient, keys: AppKeys
) -> None:
    before = await scrape(ops_server.url)
    open_streams = sample(before, "seenn_sse_connections")
    user = f"u_metrics_{secrets.token_hex(3)}"
    async with open_sse(ops_server.url, {"userId": user}, keys.auth(keys.public)) as stream:
        assert (await stream.next()).event == "connected"
        during = await scrape(ops_server.url)
        assert sample(during, "seenn_sse_connections") == open_streams + 1
        job = await create_job(ops_client, userId=user)
        await progress(ops_client, job["id"], 50)
        got = await stream.take(2)
        assert [m.event for m in got] == ["job.started", "job.progress"]

        def grew(samples: Samples, name: str) -> float:
            return sample(samples, name) - sample(before, name)

        async def delivered() -> Samples | None:
            now = await scrape(ops_server.url)
            return now if grew(now, "seenn_events_delivered_total") >= 2 else None

        now = await until(delivered, "events_delivered to count the two events")
        assert grew(now, "seenn_events_delivered_total") == 2
        assert grew(now, "seenn_events_written_total") == 2
        lag_count = grew(now, "seenn_notification_lag_seconds_count")
        lag_sum = grew(now, "seenn_notification_lag_seconds_sum")
        assert lag_count >= 2  # the hub read both events for this subscriber
        assert 0 <= lag_sum / lag_count < 5, (lag_sum, lag_count)

    def streams_answered(samples: Samples) -> float:
        return requests_total(samples, "GET", "/v1/sse", 200)

    async def closed() -> Samples | None:
        # The request is counted once its stream has ended (and the gauge gone down).
        now = await scrape(ops_server.url)
        done = streams_answered(now) > streams_answered(before)
        return now if done and sample(now, "seenn_sse_connections") == open_streams else None

    after = await until(closed, "the SSE gauge to go back down and the request to be counted")
    assert streams_answered(after) - streams_answered(before) == 1
    # The stream's lifetime is kept out of the latency histogram.
    count = "seenn_http_request_duration_seconds_count"
    assert sample(after, count, method="GET", route="/v1/sse") == sample(
        before, count, method="GET", route="/v1/sse"
    )


async def test_pool_gauge_counts_a_connection_held_by_a_blocked_write(
    ops_server: ServerProcess, ops_client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job = await create_job(ops_client)
    in_use = "seenn_db_pool_connections_in_use"
    lock = db.transaction()
    await lock.start()
    try:
        await db.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job["id"])
        blocked = asyncio.create_task(progress(ops_client, job["id"], 30))
        await wait_for_lock_waiter(db)
        assert sample(await scrape(ops_server.url), in_use) >= 1
    finally:
        await lock.rollback()
    assert (await blocked)["progress"] == 30

    async def idle_pool() -> bool:
        return sample(await scrape(ops_server.url), in_use) == 0

    await until(idle_pool, "every pooled connection to be returned")


# --- request ids and logs -----------------------------------------------------------------


async def test_a_valid_request_id_is_echoed(ops_client: httpx.AsyncClient) -> None:
    for given in ("Abc-1.2:3_x", "a" * 128, "0f8fad5b-d9cb-469f-a165-70867728950e"):
        response = await ops_client.get(
            "/jobs", params={"userId": "u"}, headers={"X-Request-ID": given}
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"] == given


async def test_a_missing_or_invalid_request_id_is_replaced_by_a_new_one(
    ops_client: httpx.AsyncClient,
) -> None:
    seen = set()
    invalid = ["a" * 129, "has space", "semi;colon", "sl/ash", "", "caf\xe9"]
    for given in [None, None, *invalid]:
        headers = {} if given is None else {"X-Request-ID": given.encode("latin-1")}
        response = await ops_client.get("/jobs", params={"userId": "u"}, headers=headers)
        assert response.status_code == 200
        generated = response.headers["x-request-id"]
        assert ULID.match(generated), generated
        seen.add(generated)
    assert len(seen) == 2 + len(invalid)  # a new id for every request


async def test_every_kind_of_response_carries_the_request_id(
    ops_server: ServerProcess, ops_client: httpx.AsyncClient, keys: AppKeys
) -> None:
    huge = b'{"jobType":"x","userId":"u","title":"t","metadata":{"a":"' + b"x" * 1_100_000 + b'"}}'
    async with httpx.AsyncClient(base_url=ops_server.url, timeout=30) as anonymous:
        cases: list[tuple[int, Callable[[], Awaitable[httpx.Response]]]] = [
            (401, lambda: anonymous.get("/v1/jobs", params={"userId": "u"}, headers=_rid("r-401"))),
            (404, lambda: anonymous.get("/nothing/here", headers=_rid("r-404"))),
            (405, lambda: anonymous.put("/healthz", headers=_rid("r-405"))),
            (400, lambda: ops_client.post("/jobs", json={"userId": "u"}, headers=_rid("r-400"))),
            (413, lambda: ops_client.post("/jobs", content=huge, headers=_rid("r-413", True))),
            (200, lambda: anonymous.get("/metrics", headers=_rid("r-200"))),
        ]
        for status, call in cases:
            response = await call()
            assert response.status_code == status, response.text
            assert response.headers["x-request-id"] == f"r-{status}"
    headers = {**keys.auth(keys.public), **_rid("r-sse")}
    async with open_sse(ops_server.url, {"userId": "u_rid"}, headers) as stream:
        assert stream.response.headers["x-request-id"] == "r-sse"


def _rid(value: str, json: bool = False) -> dict[str, str]:
    headers = {"X-Request-ID": value}
    if json:
        headers["Content-Type"] = "application/json"
    return headers


async def test_access_log_is_one_json_line_per_request_with_its_request_id(
    ops_server: ServerProcess, ops_client: httpx.AsyncClient
) -> None:
    rid = f"log-check-{secrets.token_hex(4)}"
    job = await create_job(ops_client)
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 (SEENN_FORWARDED_ALLOW_IPS).
    headers = {"X-Request-ID": rid, "X-Forwarded-For": "203.0.113.7"}
    response = await ops_client.get(f"/jobs/{job['id']}?secret=shh", headers=headers)
    assert response.status_code == 200
    line = await logged(ops_server, request_id=rid)
    assert line["logger"] == "seenn.access" and line["level"] == "INFO"
    assert line["method"] == "GET" and line["status"] == 200
    assert line["route"] == "/v1/jobs/{job_id}"
    assert line["path"] == f"/v1/jobs/{job['id']}"  # no query string (it may carry a key)
    assert "shh" not in json.dumps(line)
    assert isinstance(line["duration_ms"], float) and 0 <= line["duration_ms"] < WAIT * 1000
    assert line["client"] == "203.0.113.7"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["ts"]), line["ts"]
    assert sum(1 for record in log_lines(ops_server) if record.get("request_id") == rid) == 1
    # uvicorn's own lines are JSON too (log_lines parses every line of the log).
    assert any(r["logger"] == "uvicorn.error" for r in log_lines(ops_server))


async def test_plain_text_logs_when_json_is_off(
    database_url: str, tmp_path: Path, keys: AppKeys
) -> None:
    env = {"SEENN_LOG_JSON": "false", "SEENN_LOG_LEVEL": "info"}
    with running_server(database_url, tmp_path / "logs", env=env) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=keys.auth()) as c:
            response = await c.get("/v1/jobs", params={"userId": "u"}, headers=_rid("plain-1"))
            assert response.status_code == 200

        async def access_line() -> str | None:
            found = [line for line in server.log().splitlines() if "[plain-1]" in line]
            return found[0] if found else None

        line = await until(access_line, "the plain access line")
    assert "seenn.access" in line and "GET /v1/jobs 200" in line
    assert not line.startswith("{")


# --- graceful shutdown --------------------------------------------------------------------


async def test_sigterm_says_goodbye_to_sse_clients_and_finishes_requests_in_flight(
    database_url: str, tmp_path: Path, keys: AppKeys, db: asyncpg.Connection
) -> None:
    """The SSE client gets ``connection.idle`` (reason shutdown) before its stream closes, a
    write blocked on a row lock still completes, and the process exits 0 long before its
    30 s graceful timeout."""
    env = {"SEENN_GRACEFUL_SHUTDOWN_SECONDS": "30", "SEENN_LOG_LEVEL": "info"}
    server = start_server(database_url, tmp_path / "logs", env=env)
    try:
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers=keys.auth(), timeout=60
        ) as client:
            job = await create_job(client, userId="u_term")
            async with open_sse(server.url, {"userId": "u_term"}, keys.auth()) as stream:
                assert (await stream.next()).event == "connected"
                lock = db.transaction()
                await lock.start()
                try:
                    await db.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job["id"])
                    in_flight = asyncio.create_task(progress(client, job["id"], 70))
                    await wait_for_lock_waiter(db)
                    signalled = time.monotonic()
                    server.process.send_signal(signal.SIGTERM)
                    goodbye = await stream.next(wait=WAIT, skip=("heartbeat", "job.sync"))
                    assert goodbye is not None and goodbye.event == "connection.idle"
                    assert goodbye.data["reason"] == "shutdown" and goodbye.id is None
                    assert await stream.next(wait=WAIT) is None  # then the stream closes
                    # The blocked write is still being waited for.
                    assert not in_flight.done() and server.process.poll() is None
                finally:
                    await lock.rollback()
                assert (await in_flight)["progress"] == 70
        assert await exit_code(server, WAIT) == 0
        assert time.monotonic() - signalled < WAIT  # far from the 30 s graceful timeout
    finally:
        server.stop()
    records = log_lines(server)
    assert any(r["logger"] == "seenn.server" and "draining" in r["msg"] for r in records)
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], records
    stored = await db.fetchval("SELECT progress FROM jobs WHERE id = $1", job["id"])
    assert stored == 70


async def test_shutdown_delay_keeps_serving_with_readyz_failing_then_stops(
    database_url: str, tmp_path: Path, keys: AppKeys
) -> None:
    """With ``SEENN_SHUTDOWN_DELAY_SECONDS``, SIGTERM first turns /readyz into a 503 while
    everything else is still served, and only then closes streams and stops."""
    delay = 2.0
    env = {"SEENN_SHUTDOWN_DELAY_SECONDS": str(delay)}
    server = start_server(database_url, tmp_path / "logs", env=env)
    try:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as c,
            open_sse(server.url, {"userId": "u_delay"}, keys.auth()) as stream,
        ):
            assert (await stream.next()).event == "connected"
            assert (await c.get("/readyz")).status_code == 200
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

            async def not_ready() -> httpx.Response | None:
                response = await c.get("/readyz")
                return response if response.status_code == 503 else None

            response = await until(not_ready, "/readyz to fail while draining")
            error = assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert "shutting down" in error["message"]
            # Noticed within the delay: the streams are still open (no goodbye yet).
            queued = list(stream.messages._queue)
            assert not [m for m in queued if m is None or m.event != "heartbeat"], queued
            jobs = await c.get("/v1/jobs", params={"userId": "u"}, headers=keys.auth())
            assert jobs.status_code == 200  # still serving
            goodbye = await stream.next(wait=WAIT)
            assert goodbye is not None and goodbye.event == "connection.idle"
            assert goodbye.data["reason"] == "shutdown"
            assert time.monotonic() - signalled >= delay * 0.9
        assert await exit_code(server, WAIT) == 0
    finally:
        server.stop()
