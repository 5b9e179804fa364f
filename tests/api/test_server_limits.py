"""The SSE per-key cap and the API key cache, on real server processes started with those
settings (every other test server runs with the cache off and the default caps)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.db.engine import plain_url
from app.domain.keys import hash_key
from tests.conftest import AppKeys, make_app
from tests.support.harness import ServerProcess, create_key, start_server
from tests.support.helpers import assert_error
from tests.support.sse_client import open_sse

KEY_CAP = 2
CACHE_SECONDS = 2.0


@pytest.fixture(scope="module")
def capped(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    proc = start_server(
        database_url,
        workdir / "sse-key-cap",
        env={"SEENN_SSE_MAX_CONNECTIONS_PER_KEY": str(KEY_CAP)},
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def cached(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    proc = start_server(
        database_url,
        workdir / "auth-cache",
        env={"SEENN_AUTH_CACHE_SECONDS": str(CACHE_SECONDS)},
    )
    yield proc
    proc.stop()


async def _sse_status(base_url: str, key: str, user: str) -> httpx.Response:
    """Open a stream and close it at once: the response (its body read only if not 200)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
        params = {"userId": user, "apiKey": key}
        async with c.stream("GET", "/v1/sse", params=params) as r:
            body = await r.aread() if r.status_code != 200 else b""
            return httpx.Response(r.status_code, headers=r.headers, content=body)


async def test_the_per_key_cap_refuses_one_stream_too_many_whatever_the_user(
    capped: ServerProcess, keys: AppKeys
) -> None:
    async with contextlib.AsyncExitStack() as streams:
        for i in range(KEY_CAP):  # a different user each: only the key's cap applies
            s = await streams.enter_async_context(
                open_sse(capped.url, {"userId": f"u_cap{i}", "apiKey": keys.public})
            )
            assert (await s.next()).event == "connected"
        refused = await _sse_status(capped.url, keys.public, "u_cap_new")
        error = assert_error(refused, 429, "RATE_LIMITED")
        assert error["details"]["scope"] == "key"
        assert error["details"]["maxConnections"] == KEY_CAP
        assert refused.headers["retry-after"].isdigit()
        # Another key of the same app has caps of its own.
        async with open_sse(capped.url, {"userId": "u_cap_new", "apiKey": keys.secret}) as s:
            assert (await s.next()).event == "connected"
        # Closing one stream frees its slot: the server notices the disconnect, then the
        # next connection is admitted (polled: only 429s are acceptable meanwhile).
        first = streams.pop_all()
    async with first:
        pass
    async with contextlib.AsyncExitStack() as streams:
        s = await streams.enter_async_context(
            open_sse(capped.url, {"userId": "u_cap0", "apiKey": keys.public})
        )
        assert (await s.next()).event == "connected"
        deadline = time.monotonic() + 60
        while True:
            again = await _sse_status(capped.url, keys.public, "u_cap_new")
            if again.status_code == 200:
                break
            assert_error(again, 429, "RATE_LIMITED")
            assert time.monotonic() < deadline, "a closed stream never gave its slot back"
            await asyncio.sleep(0.1)


async def _revoke(database_url: str, key: str) -> None:
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        done = await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1", hash_key(key)
        )
        assert done == "UPDATE 1"
    finally:
        await conn.close()


async def test_a_revoked_key_works_at_most_for_the_cache_window_then_gets_401(
    cached: ServerProcess, database_url: str
) -> None:
    """With the cache on, a revoked key may keep working until its cached lookup expires,
    and never after.

    The bounds come from the test's own monotonic clock (the server's cache uses the same
    one): the lookup happens between sending the first request and receiving its answer,
    so an answer received less than the window after that send must still be a 200, and a
    request sent more than the window after that answer must be a 401.
    """
    still_served = False
    for _ in range(5):  # on a stalled machine the window may pass before the check
        app = await make_app(database_url)
        key = await create_key(database_url, app.app_id)
        async with httpx.AsyncClient(
            base_url=f"{cached.url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as c:
            sent = time.monotonic()
            assert (await c.get("/jobs", params={"userId": "u"})).status_code == 200
            answered = time.monotonic()
            await _revoke(database_url, key)
            right_after = await c.get("/jobs", params={"userId": "u"})
            if time.monotonic() - sent < CACHE_SECONDS:
                assert right_after.status_code == 200, right_after.text  # served from cache
                still_served = True
            # Poll until the revocation applies.
            while True:
                send = time.monotonic()
                response = await c.get("/jobs", params={"userId": "u"})
                if response.status_code == 401:
                    assert_error(response, 401, "UNAUTHORIZED")
                    break
                assert response.status_code == 200, response.text
                assert send <= answered + CACHE_SECONDS, "served after the cache window"
                await asyncio.sleep(0.05)
            # From now on every request is refused, SSE included.
            assert_error(await c.get("/jobs", params={"userId": "u"}), 401, "UNAUTHORIZED")
        assert_error(await _sse_status(cached.url, key, "u"), 401, "UNAUTHORIZED")
        if still_served:
            break
    assert still_served, "the cache never served a revoked key: is it on?"


async def test_a_refused_key_that_is_reinstated_is_refused_at_most_for_the_window(
    cached: ServerProcess, database_url: str
) -> None:
    """A refused lookup is cached too, for the same window at most."""
    app_id = f"app_{secrets.token_hex(6)}"
    key = await create_key(database_url, app_id)
    await _revoke(database_url, key)
    async with httpx.AsyncClient(
        base_url=f"{cached.url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        assert_error(await c.get("/jobs", params={"userId": "u"}), 401, "UNAUTHORIZED")
        answered = time.monotonic()
        conn = await asyncpg.connect(plain_url(database_url))
        try:
            await conn.execute(
                "UPDATE api_keys SET revoked_at = NULL WHERE key_hash = $1", hash_key(key)
            )
        finally:
            await conn.close()
        while True:
            send = time.monotonic()
            response = await c.get("/jobs", params={"userId": "u"})
            if response.status_code == 200:
                break
            assert_error(response, 401, "UNAUTHORIZED")
            assert send <= answered + CACHE_SECONDS, "refused after the cache window"
            await asyncio.sleep(0.05)
