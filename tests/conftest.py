"""Fixtures: one real PostgreSQL and one real server process per test session.

Each test gets its own app id (and keys), so tests never see each other's data.

With ``SEENN_TEST_IN_PROCESS=1`` the ``client`` fixture drives the application inside the
test process instead (``inprocess_client``: the same app, same settings, same real
database, through ``httpx.ASGITransport``). The mutation run (scripts/mutation.sh) sets it,
so that the service, event log and idempotency code runs where mutmut can see it.
"""

from __future__ import annotations

import os
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
from app.settings import Settings
from tests.support.harness import (
    ServerProcess,
    create_key,
    drop_database,
    provision_database,
    start_server,
)


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
    elif os.environ.get("SEENN_TEST_DROP_DATABASE") == "1":  # a shared server's: drop it
        drop_database(url)


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


IN_PROCESS = os.environ.get("SEENN_TEST_IN_PROCESS") == "1"


@pytest.fixture(scope="module")
async def inprocess_app(database_url: str) -> AsyncIterator[object]:
    """The application in the test process, started (lifespan) on the session's database,
    with the settings a test server gets (``tests.support.harness.start_server``). One per test
    module: its startup then counts for a test of each module in the mutation run's
    record of which tests run which code."""
    from app.main import create_app

    settings = Settings(database_url=database_url, auth_cache_seconds=0, log_level="warning")
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def inprocess_client(
    inprocess_app: object, keys: AppKeys
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the in-process application (no streaming responses: SSE tests
    use a server process), authenticated with the test's secret key."""
    transport = httpx.ASGITransport(app=inprocess_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport, base_url="http://seenn.test/v1", headers=keys.auth(), timeout=30
    ) as c:
        yield c


if IN_PROCESS:

    @pytest.fixture
    async def client(
        inprocess_client: httpx.AsyncClient,
    ) -> AsyncIterator[httpx.AsyncClient]:
        """The in-process application's client (``SEENN_TEST_IN_PROCESS=1``)."""
        yield inprocess_client

else:

    @pytest.fixture
    async def client(server: ServerProcess, keys: AppKeys) -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client for the session's server, authenticated with the test's secret key."""
        headers = keys.auth()
        async with httpx.AsyncClient(base_url=f"{server.url}/v1", headers=headers, timeout=30) as c:
            yield c
