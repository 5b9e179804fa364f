"""Per-key rate limits: headers on every authenticated response, 429 with ``Retry-After``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from ulid import ULID

from app.api.errors import install_error_handlers
from app.api.guards import RequestGuards
from app.api.ratelimit import RateLimiter
from app.api.sse_limits import ConnectionLimiter, SseSlot, acquire_sse_slot
from app.domain.keys import Principal
from app.settings import Settings
from tests.conftest import AppKeys
from tests.support.harness import ServerProcess, running_server
from tests.support.helpers import assert_error, create_job

RATE = 0.5  # tokens per second on the limited server: one every 2 s
BURST = 3


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rate_headers(response: httpx.Response) -> tuple[int, int]:
    return int(response.headers["X-RateLimit-Limit"]), int(
        response.headers["X-RateLimit-Remaining"]
    )


@pytest.fixture(scope="module")
def limited_server(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    env = {"SEENN_RATE_LIMIT_PER_SECOND": str(RATE), "SEENN_RATE_LIMIT_BURST": str(BURST)}
    with running_server(database_url, workdir / "logs-ratelimit", env=env) as server:
        yield server


# --- the bucket itself, on a simulated clock ------------------------------------------


def test_bucket_allows_the_burst_at_once_then_refuses_until_a_token_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_second=10, burst=5, clock=clock)
    decisions = [limiter.check("k") for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    refused = limiter.check("k")
    assert not refused.allowed and refused.remaining == 0 and refused.limit == 5
    assert refused.retry_after == pytest.approx(0.1)
    assert refused.retry_after_header == "1"  # whole seconds, never 0
    clock.now += 0.05
    assert not limiter.check("k").allowed
    clock.now += 0.05
    assert limiter.check("k").allowed  # refusals took no token
    assert not limiter.check("k").allowed


def test_bucket_refills_to_the_burst_and_no_further() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_second=10, burst=5, clock=clock)
    for _ in range(5):
        limiter.check("k")
    clock.now += 0.25
    assert [limiter.check("k").allowed for _ in range(3)] == [True, True, False]
    clock.now += 3600
    assert limiter.check("k").remaining == 4


def test_buckets_are_per_key() -> None:
    limiter = RateLimiter(per_second=1, burst=1, clock=FakeClock())
    assert limiter.check("a").allowed
    assert not limiter.check("a").allowed
    assert limiter.check("b").allowed


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_second=0.4, burst=1, clock=clock)
    limiter.check("k")
    refused = limiter.check("k")
    assert refused.retry_after == pytest.approx(2.5)
    assert refused.retry_after_header == "3"


def test_connection_limiter_caps_and_releases_per_key() -> None:
    limiter = ConnectionLimiter(max_per_key=2)
    a1, a2 = limiter.acquire("a"), limiter.acquire("a")
    assert a1 is not None and a2 is not None
    assert limiter.acquire("a") is None
    assert limiter.acquire("b") is not None
    a1.release()
    assert limiter.open_connections("a") == 1
    a3 = limiter.acquire("a")
    assert a3 is not None
    a2.release()
    a3.release()
    assert limiter.open_connections("a") == 0


def test_a_user_at_the_cap_replaces_its_oldest_stream_and_the_key_cap_still_refuses() -> None:
    # A public key is shared by every install of an app: a user at its cap gets the new
    # stream (the oldest is told to end), and the key as a whole is capped at the (much
    # higher) replica guard.
    limiter = ConnectionLimiter(max_per_key=3, max_per_user=2)
    told: list[tuple[str, str]] = []
    first, second = limiter.acquire("k", "u1"), limiter.acquire("k", "u1")
    assert first is not None and second is not None
    first.on_replaced(lambda reason: told.append(("first", reason)))
    second.on_replaced(lambda reason: told.append(("second", reason)))
    third = limiter.acquire("k", "u1")
    assert third is not None
    assert told == [("first", "replaced")] and first.replaced and not second.replaced
    assert limiter.open_connections("k", "u1") == 2 and limiter.open_connections("k") == 2
    first.release()  # the replaced stream ending later gives back nothing twice
    assert limiter.open_connections("k") == 2
    assert limiter.acquire("k", "u2") is not None
    assert limiter.acquire("k", "u3") is None  # the key's cap: refused, nothing replaced
    assert limiter.acquire("k", "u1") is not None  # at its own cap: replaces, key count same
    assert told[-1] == ("second", "replaced")
    assert limiter.acquire("other", "u1") is not None  # another key is counted apart


def test_a_stream_replaced_before_it_registered_is_told_at_once() -> None:
    limiter = ConnectionLimiter(max_per_key=10, max_per_user=1)
    old = limiter.acquire("k", "u")
    assert old is not None and limiter.acquire("k", "u") is not None
    told: list[str] = []
    old.on_replaced(told.append)  # the old stream was still connecting
    assert told == ["replaced"]


def test_an_sse_slot_is_released_once_however_often_release_is_called() -> None:
    limiter = ConnectionLimiter(max_per_key=2)
    assert limiter.acquire("a") is not None
    slot = limiter.acquire("a")
    assert slot is not None
    slot.release()
    slot.release()  # e.g. from the generator's finally and the background task
    assert limiter.open_connections("a") == 1


async def test_the_sse_key_cap_answers_429_with_retry_after_in_the_envelope() -> None:
    """The HTTP shape a stream endpoint gets from ``acquire_sse_slot`` (in-process app)."""
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestGuards, max_bytes=1024)
    app.state.sse_limiter = ConnectionLimiter(max_per_key=2, max_per_user=1)
    held: list[SseSlot] = []

    @app.get("/stream")
    async def stream(request: Request) -> dict[str, bool]:
        user = request.query_params.get("userId")
        held.append(acquire_sse_slot(request, Principal("key_1", "app", "test", "public"), user))
        return {"ok": True}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/stream?userId=a")).status_code == 200
        assert (await client.get("/stream?userId=a")).status_code == 200  # replaces
        assert held[0].replaced
        assert (await client.get("/stream?userId=b")).status_code == 200
        refused = await client.get("/stream?userId=c")
        error = assert_error(refused, 429, "RATE_LIMITED")
        assert refused.headers["Retry-After"] == "5"
        assert error["details"] == {"maxConnections": 2, "scope": "key", "retryAfter": 5}
        held[1].release()
        assert (await client.get("/stream?userId=c")).status_code == 200


# --- over HTTP, default limits (the session server) ------------------------------------


async def test_every_authenticated_response_carries_rate_limit_headers(
    client: httpx.AsyncClient, keys: AppKeys
) -> None:
    job = await create_job(client)
    responses = {
        "created": await client.post("/jobs", json={"jobType": "t", "userId": "u", "title": "x"}),
        "ok": await client.get(f"/jobs/{job['id']}"),
        "list": await client.get("/jobs", params={"userId": "user_1"}),
        "not found": await client.get(f"/jobs/{ULID()}"),
        "invalid": await client.post("/jobs", json={"jobType": "t"}),
        "completed": await client.post(f"/jobs/{job['id']}/complete", json={}),
        "public write": await client.post(
            "/jobs",
            json={"jobType": "t", "userId": "u", "title": "x"},
            headers=keys.auth(keys.public),
        ),
    }
    responses["terminal"] = await client.post(f"/jobs/{job['id']}/progress", json={"progress": 1})
    expected = {
        "created": 201,
        "ok": 200,
        "list": 200,
        "not found": 404,
        "invalid": 400,
        "completed": 200,
        "public write": 403,
        "terminal": 400,
    }
    for name, response in responses.items():
        assert response.status_code == expected[name], (name, response.text)
        limit, remaining = rate_headers(response)
        assert limit >= 1000 and 0 <= remaining <= limit, name


async def test_unauthenticated_responses_carry_no_rate_limit_headers(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=f"{server.url}/v1") as anon:
        response = await anon.get("/jobs", params={"userId": "u"})
    assert_error(response, 401, "UNAUTHORIZED")
    assert "X-RateLimit-Limit" not in response.headers


def test_default_burst_admits_an_sdk_create_batch_of_1000_children_at_once() -> None:
    # The default limiter, checked directly: the HTTP batch itself is in test_concurrency.
    settings = Settings()
    limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst, FakeClock())
    assert all(limiter.check("k").allowed for _ in range(1 + 1000 + 1))


# --- over HTTP, a tiny limit -----------------------------------------------------------


async def test_burst_then_429_with_retry_after_then_allowed_again(
    limited_server: ServerProcess, keys: AppKeys
) -> None:
    async with httpx.AsyncClient(
        base_url=f"{limited_server.url}/v1", headers=keys.auth(), timeout=30
    ) as client:
        first = await client.post("/jobs", json={"jobType": "t", "userId": "u", "title": "x"})
        assert first.status_code == 201, first.text
        assert rate_headers(first) == (BURST, BURST - 1)
        refused = None
        for _ in range(BURST + 5):
            response = await client.get(f"/jobs/{first.json()['id']}")
            if response.status_code == 429:
                refused = response
                break
            assert response.status_code == 200, response.text
        assert refused is not None, "the limit was never reached"
        error = assert_error(refused, 429, "RATE_LIMITED")
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 1 / RATE
        assert error["details"]["retryAfter"] == retry_after
        assert rate_headers(refused) == (BURST, 0)

        # Another key of the same app has its own bucket.
        other = await client.get(
            f"/jobs/{ULID()}", headers={"Authorization": f"Bearer {keys.public}"}
        )
        assert_error(other, 404, "NOT_FOUND")
        assert rate_headers(other) == (BURST, BURST - 1)
        # And so has another secret key (each secret key is one server).
        live = await client.get(
            f"/jobs/{ULID()}", headers={"Authorization": f"Bearer {keys.live_secret}"}
        )
        assert_error(live, 404, "NOT_FOUND")
        assert rate_headers(live) == (BURST, BURST - 1)

        await asyncio.sleep(retry_after)
        again = await client.get(f"/jobs/{first.json()['id']}")
        assert again.status_code == 200, again.text
        assert rate_headers(again)[0] == BURST


async def test_concurrent_requests_beyond_the_burst_get_429(
    limited_server: ServerProcess, keys: AppKeys
) -> None:
    async with httpx.AsyncClient(
        base_url=f"{limited_server.url}/v1", headers=keys.auth(), timeout=30
    ) as client:
        started = time.monotonic()
        responses = await asyncio.gather(
            *(client.get("/jobs", params={"userId": "u"}) for _ in range(12))
        )
        elapsed = time.monotonic() - started
    allowed = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(allowed) + len(refused) == len(responses)
    # The burst, plus whatever refilled while the requests were in flight.
    assert BURST <= len(allowed) <= BURST + int(elapsed * RATE) + 1
    for response in refused:
        assert_error(response, 429, "RATE_LIMITED")
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["X-RateLimit-Remaining"] == "0"


async def test_rate_limits_can_be_turned_off(
    database_url: str, workdir: Path, keys: AppKeys
) -> None:
    env = {"SEENN_RATE_LIMIT_ENABLED": "false", "SEENN_RATE_LIMIT_BURST": "1"}
    with running_server(database_url, workdir / "logs-ratelimit-off", env=env) as server:
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers=keys.auth(), timeout=30
        ) as client:
            responses = [await client.get("/jobs", params={"userId": "u"}) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert all("X-RateLimit-Limit" not in r.headers for r in responses)
