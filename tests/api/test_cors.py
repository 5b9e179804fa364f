"""Browser clients (web builds of the apps) across origins: CORS only where configured."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import AppKeys
from tests.support.harness import start_server

ORIGIN = "https://app.example"


def _preflight(method: str, headers: str) -> dict[str, str]:
    return {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_configured_origins_get_preflights_and_readable_headers(
    database_url: str, tmp_path: Path, keys: AppKeys
) -> None:
    server = start_server(
        database_url, tmp_path / "logs", env={"SEENN_CORS_ALLOW_ORIGINS": f"{ORIGIN}, https://b"}
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            pre = await c.options("/v1/sse", headers=_preflight("GET", "authorization"))
            assert pre.status_code == 200
            assert pre.headers["access-control-allow-origin"] == ORIGIN
            assert "authorization" in pre.headers["access-control-allow-headers"].lower()
            pre = await c.options(
                "/v1/jobs", headers=_preflight("POST", "authorization,content-type,idempotency-key")
            )
            assert pre.status_code == 200 and "POST" in pre.headers["access-control-allow-methods"]
            body = {"jobType": "t", "userId": "u_cors", "title": "x"}
            created = await c.post("/v1/jobs", json=body, headers={**keys.auth(), "Origin": ORIGIN})
            assert created.status_code == 201
            assert created.headers["access-control-allow-origin"] == ORIGIN
            exposed = created.headers["access-control-expose-headers"].lower()
            assert "x-ratelimit-remaining" in exposed and "retry-after" in exposed
            # Another origin is not allowed.
            other = await c.options(
                "/v1/jobs",
                headers={**_preflight("POST", "content-type"), "Origin": "https://evil.example"},
            )
            assert other.status_code == 400
            assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()


async def test_by_default_no_cors_headers_are_sent(server, keys: AppKeys) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        r = await c.get(
            "/v1/jobs", params={"userId": "u"}, headers={**keys.auth(), "Origin": ORIGIN}
        )
        assert r.status_code == 200
        assert not any(h.startswith("access-control-") for h in r.headers)
