"""The ``seenn-server`` console command, run as a real process."""

import os
import subprocess
import sys

import httpx

from app.db.embedded import is_root
from tests.support.harness import ROOT, TEST_PG_USER, create_database
from tests.support.helpers import assert_error


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_keys_create_list_revoke(server, database_url):
    env = {"SEENN_DATABASE_URL": database_url}
    created = cli(
        "keys", "create", "--app", "cli-app", "--type", "secret", "--mode", "live", env=env
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sk_live_") and len(key) == 40

    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {key}"}
    ) as c:
        made = await c.post("/jobs", json={"jobType": "x", "userId": "u", "title": "t"})
        assert made.status_code == 201 and made.json()["appId"] == "cli-app"

        listing = cli("keys", "list", "--app", "cli-app", env=env)
        assert listing.returncode == 0
        line = next(ln for ln in listing.stdout.splitlines() if key[-4:] in ln)
        assert key not in listing.stdout  # only a hint is ever shown
        key_id = line.split()[0]
        assert "active" in line

        revoked = cli("keys", "revoke", key_id, env=env)
        assert revoked.returncode == 0, revoked.stderr
        assert_error(await c.get("/jobs", params={"userId": "u"}), 401, "UNAUTHORIZED")
        assert "revoked" in cli("keys", "list", "--app", "cli-app", env=env).stdout
        assert cli("keys", "revoke", key_id, env=env).returncode == 1


def test_public_key_prefix(database_url):
    created = cli(
        "keys",
        "create",
        "--app",
        "cli-app",
        "--type",
        "public",
        "--mode",
        "test",
        env={"SEENN_DATABASE_URL": database_url},
    )
    assert created.stdout.strip().splitlines()[-1].startswith("pk_test_")


def test_migrate_without_database_url_starts_an_embedded_server(reachable_tmp):
    env = {k: v for k, v in os.environ.items() if k not in ("SEENN_DATABASE_URL", "DATABASE_URL")}
    if is_root():  # the documented opt-in
        env["SEENN_EMBEDDED_PG_USER"] = TEST_PG_USER
    env["SEENN_DATA_DIR"] = str(reachable_tmp / "data")
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (reachable_tmp / "data" / "pgdata" / "PG_VERSION").exists()
    assert "up to date" in result.stderr


def test_keys_list_and_revoke_create_the_schema_of_a_fresh_database(database_url):
    fresh = create_database(database_url, "seenn_fresh")
    env = {"SEENN_DATABASE_URL": fresh}
    listing = cli("keys", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == ["id", "app", "mode", "type", "key", "status"]
    revoked = cli("keys", "revoke", "01ARZ3NDEKTSV4RRFFQ69G5FAV", env=env)
    assert revoked.returncode == 1 and "Traceback" not in revoked.stderr
    assert "no active key" in revoked.stderr
    for command in (("signing-keys", "list"), ("apps", "show", "--app", "a")):
        result = cli(*command, env=env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
