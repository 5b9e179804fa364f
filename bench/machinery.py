"""The HTTP machinery's own CPU per request, in process: what a request costs above the database.

    .venv/bin/python -m bench.machinery [--requests 3000] [--rounds 5]

Builds the real app on a real, migrated database (embedded PostgreSQL, or one inside
``SEENN_TEST_DATABASE_URL``'s server), creates a key and a job, and reads the job once
through the app. It then sends ``GET /v1/jobs/{id}`` straight to the ASGI app (no socket,
no uvicorn) with the job read answered from that first read, so each request runs
everything the server does above the database: the middlewares, routing, authentication
(from the key cache), validation, the endpoint, the job view, the response and the
metrics. Also timed: a malformed job id (a validation error, answered 404) and an unknown
key (401). Process CPU time, so other load on the machine matters less than it does to
throughput; compare revisions by running this in each checkout, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

os.environ.setdefault("SEENN_RATE_LIMIT_ENABLED", "false")
os.environ.setdefault("SEENN_AUTH_CACHE_SECONDS", "600")
os.environ.setdefault("SEENN_LOG_LEVEL", "warning")
os.environ.setdefault("SEENN_SWEEP_INTERVAL_SECONDS", "0")


async def call(app: Any, method: str, path: str, key: str, body: bytes = b"") -> dict[str, Any]:
    """One request to the ASGI app; the status and body it answered."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"authorization", b"Bearer " + key.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    out: dict[str, Any] = {"body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out


async def measure(url: str, key: str, requests: int, rounds: int) -> dict[str, float]:
    from app.domain.operations import Operations
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(), database_url=url)
    async with app.router.lifespan_context(app):
        created = await call(
            app,
            "POST",
            "/v1/jobs",
            key,
            orjson.dumps({"jobType": "t", "userId": "u", "title": "x"}),
        )
        assert created["status"] == 201, created
        path = f"/v1/jobs/{orjson.loads(created['body'])['id']}"
        # The route's one read is the caller's ``Operations.job``: answered from memory.
        real_read = Operations.job
        row: list[Any] = []

        async def first_read(ops: Operations, job_id: str) -> Any:
            row.append(await real_read(ops, job_id))
            return row[0]

        async def from_memory(ops: Operations, job_id: str) -> Any:
            return row[0]

        Operations.job = first_read  # type: ignore[method-assign]
        assert (await call(app, "GET", path, key))["status"] == 200
        Operations.job = from_memory  # type: ignore[method-assign]
        try:
            results: dict[str, float] = {}
            for label, target, k, status in (
                ("get_us", path, key, 200),
                ("validation_error_us", "/v1/jobs/nope", key, 404),
                ("unknown_key_us", path, "sk_test_" + "0" * 32, 401),
            ):
                per_round = []
                for _ in range(rounds):
                    started = time.process_time()
                    for _ in range(requests):
                        answer = await call(app, "GET", target, k)
                    assert answer["status"] == status, answer
                    per_round.append((time.process_time() - started) / requests * 1e6)
                results[label] = round(statistics.median(per_round), 1)
            return results
        finally:
            Operations.job = real_read  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    from tests.support.harness import create_key, provision_database

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="seenn-machinery-") as tmp:
        url, handle = provision_database(Path(tmp))
        key = asyncio.run(create_key(url, "machinery_app"))
        import uvloop

        results = uvloop.run(measure(url, key, args.requests, args.rounds))
        close = getattr(handle, "close", None)
        if close is not None:
            close()
    print(orjson.dumps(results).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
