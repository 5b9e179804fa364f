"""``seenn-server keys bootstrap``: the first-run key that ``docker compose logs init`` shows."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys

import httpx

from tests.support.harness import ROOT, create_key


def bootstrap(database_url: str, app_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "bootstrap", "--app", app_id],
        cwd=ROOT,
        env={**os.environ, "SEENN_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def fresh_app() -> str:
    return f"boot_{secrets.token_hex(5)}"


async def active_keys(db, app_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT kind, mode FROM api_keys WHERE app_id = $1 AND revoked_at IS NULL", app_id
    )
    return [f"{r['kind']} {r['mode']}" for r in rows]


async def test_first_run_prints_a_working_secret_test_key(server, database_url, db) -> None:
    app_id = fresh_app()
    first = bootstrap(database_url, app_id)
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert key.startswith("sk_test_") and len(key) == 40 and "\n" not in key  # stdout: the key
    assert "shown only once" in first.stderr and "Authorization: Bearer" in first.stderr
    assert await active_keys(db, app_id) == ["secret test"]

    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {key}"}
    ) as c:
        made = await c.post("/jobs", json={"jobType": "x", "userId": "u", "title": "t"})
        assert made.status_code == 201 and made.json()["appId"] == app_id


async def test_later_runs_create_nothing_and_say_how_to_make_another(database_url, db) -> None:
    app_id = fresh_app()
    key = bootstrap(database_url, app_id).stdout.strip()

    again = bootstrap(database_url, app_id)
    assert again.returncode == 0, again.stderr  # an init container re-run must succeed
    assert again.stdout == ""  # stdout carries a key only when one was created
    assert "already has 1 active key" in again.stderr
    assert key[-4:] in again.stderr and key not in again.stderr  # a hint, never the key
    assert f"keys create --app {app_id}" in again.stderr
    assert await active_keys(db, app_id) == ["secret test"]


async def test_any_active_key_counts_but_revoked_keys_do_not(database_url, db) -> None:
    app_id = fresh_app()
    await create_key(database_url, app_id, "public", "live")
    kept = bootstrap(database_url, app_id)
    assert kept.returncode == 0 and kept.stdout == "" and "public live" in kept.stderr

    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE app_id = $1", app_id)
    made = bootstrap(database_url, app_id)
    assert made.returncode == 0 and made.stdout.strip().startswith("sk_test_")
    assert await active_keys(db, app_id) == ["secret test"]


async def test_concurrent_first_runs_create_exactly_one_key(database_url, db) -> None:
    app_id = fresh_app()
    runs = await asyncio.gather(
        *(asyncio.to_thread(bootstrap, database_url, app_id) for _ in range(3))
    )
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    printed = [r.stdout.strip() for r in runs if r.stdout.strip()]
    assert len(printed) == 1 and printed[0].startswith("sk_test_")
    assert await active_keys(db, app_id) == ["secret test"]
