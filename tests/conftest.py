"""Fixtures: one real PostgreSQL and one real server process per test session.

Each test gets its own app id (and keys), so tests never see each other's data.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.db.engine import plain_url
from tests.harness import ServerProcess, create_key, provision_database, start_server


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("seenn")


@pytest.fixture
def reachable_tmp(tmp_path: Path) -> Iterator[Path]:
    """A folder for an embedded server's data. As root, one under /tmp that the server's
    system user can enter (pytest's own are 0700), removed afterwards."""
    from app.db.embedded import is_root

    if not is_root():
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="seenn-tmp-"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(workdir: Path) -> Iterator[str]:
    url, handle = provision_database(workdir)
    yield url
    if hasattr(handle, "close"):
        handle.close()


@pytest.fixture(scope="session")
def server(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    proc = start_server(database_url, workdir / "logs")
    yield proc
    proc.stop()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(plain_url(database_url))
    yield conn
    await conn.close()


@dataclass
class AppKeys:
    """A fresh app with a key of every kind."""

    app_id: str
    secret: str
    public: str
    live_secret: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.secret}"}


async def make_app(database_url: str) -> AppKeys:
    app_id = f"app_{secrets.token_hex(6)}"
    return AppKeys(
        app_id,
        await create_key(database_url, app_id, "secret", "test"),
        await create_key(database_url, app_id, "public", "test"),
        await create_key(database_url, app_id, "secret", "live"),
    )


@pytest.fixture
async def keys(database_url: str) -> AppKeys:
    return await make_app(database_url)


@pytest.fixture
async def client(server: ServerProcess, keys: AppKeys) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the session's server, authenticated with the test's secret key."""
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", headers=keys.auth(), timeout=30) as c:
        yield c
