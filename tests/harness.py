"""Real PostgreSQL and real server processes for the test suite and benchmarks."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from app.db.engine import plain_url
from app.domain.keys import generate_key, hash_key, key_hint

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def provision_database(workdir: Path) -> tuple[str, object]:
    """A fresh, migrated database: inside ``SEENN_TEST_DATABASE_URL``'s server, or embedded."""
    from app.db.embedded import start_embedded
    from app.db.migrate import upgrade

    base = os.environ.get("SEENN_TEST_DATABASE_URL")
    handle: object = None
    if base is None:
        base, handle = start_embedded(workdir)
    name = f"seenn_test_{os.getpid()}_{secrets.token_hex(3)}"

    async def create() -> None:
        conn = await asyncpg.connect(plain_url(base))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    url = _with_database(base, name)
    upgrade(url)
    return url, handle


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def create_key(url: str, app_id: str, kind: str = "secret", mode: str = "test") -> str:
    """Insert an API key directly (what ``seenn-server keys create`` does)."""
    from ulid import ULID

    key = generate_key(kind, mode)
    conn = await asyncpg.connect(plain_url(url))
    try:
        await conn.execute(
            "INSERT INTO api_keys (id, app_id, mode, kind, key_hash, key_hint, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, now())",
            str(ULID()), app_id, mode, kind, hash_key(key), key_hint(key),
        )
    finally:
        await conn.close()
    return key


@dataclass
class ServerProcess:
    """A ``seenn-server serve`` child process on a loopback port."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, sig: int | None = None, timeout: float = 15) -> None:
        if self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    database_url: str, log_dir: Path, env: dict[str, str] | None = None, port: int | None = None
) -> ServerProcess:
    """Start a server process and wait until it answers HTTP."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "SEENN_DATABASE_URL": database_url,
        "SEENN_AUTH_CACHE_SECONDS": "0",
        "SEENN_LOG_LEVEL": "warning",
        **(env or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            httpx.get(f"{server.url}/v1/jobs", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start:\n{server.log()}")


@contextmanager
def running_server(database_url: str, log_dir: Path, **kwargs: object) -> Iterator[ServerProcess]:
    server = start_server(database_url, log_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
