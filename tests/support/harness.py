"""Real PostgreSQL and real server processes for the test suite and benchmarks."""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.db.engine import plain_url
from app.domain.keys import generate_key, hash_key, key_hint

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# As root the embedded server runs as this system user (the documented opt-in).
TEST_PG_USER = os.environ.get("SEENN_EMBEDDED_PG_USER") or "seenn-postgres"


class EmbeddedForTests:
    """The embedded server of a test session; as root, in a folder of its own under /tmp
    (pytest's folders are 0700, which the server's system user cannot enter)."""

    def __init__(self, workdir: Path) -> None:
        import tempfile

        from app.db.embedded import is_root, start_embedded

        self.folder: Path | None = None
        self.closed = False
        if is_root():
            self.folder = Path(tempfile.mkdtemp(prefix="seenn-test-pg-"))
            self.folder.chmod(0o711)  # ours: the system user must enter it
            self.url, self.handle = start_embedded(self.folder, TEST_PG_USER)
            atexit.register(self.close)  # runs before the handle's own: the folder goes too
        else:
            self.url, self.handle = start_embedded(workdir)

    def close(self) -> None:
        import shutil

        self.closed = True
        close = getattr(self.handle, "close", None)
        if close is not None and self.folder is not None:
            close()
            shutil.rmtree(self.folder, ignore_errors=True)


_embedded: EmbeddedForTests | None = None


def provision_database(workdir: Path) -> tuple[str, object]:
    """A fresh, migrated database: inside ``SEENN_TEST_DATABASE_URL``'s server, or embedded.

    The handle keeps the embedded server running; ``close()`` it when done (or let the
    process exit).
    """
    from app.db.migrate import upgrade

    global _embedded
    base = os.environ.get("SEENN_TEST_DATABASE_URL")
    handle: object = None
    if base is None:
        if _embedded is None or _embedded.closed:  # one server per process, as before
            _embedded = EmbeddedForTests(workdir)
        base, handle = _embedded.url, _embedded
    url = create_database(base, f"seenn_test_{os.getpid()}")
    upgrade(url)
    return url, handle


def create_database(server_url: str, prefix: str) -> str:
    """A new, empty database named ``prefix`` plus a random suffix on ``server_url``'s
    server; returns its URL (same credentials and options)."""
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{secrets.token_hex(3)}"

    async def create() -> None:
        conn = await asyncpg.connect(plain_url(server_url))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop ``url``'s database, ending the connections still open to it."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)

    async def drop() -> None:
        conn = await asyncpg.connect(
            plain_url(parsed.set(database="postgres").render_as_string(False))
        )
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


async def create_key(url: str, app_id: str, kind: str = "secret", mode: str = "test") -> str:
    """Insert an API key directly (what ``seenn-server keys create`` does)."""
    from ulid import ULID

    key = generate_key(kind, mode)
    conn = await asyncpg.connect(plain_url(url))
    try:
        await conn.execute(
            "INSERT INTO api_keys (id, app_id, mode, kind, key_hash, key_hint, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, now())",
            str(ULID()),
            app_id,
            mode,
            kind,
            hash_key(key),
            key_hint(key),
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


class PortTaken(RuntimeError):
    """Another process bound the port between ``free_port`` and the server's bind."""


def start_server(
    database_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
    args: tuple[str, ...] = (),
    root: Path = ROOT,
) -> ServerProcess:
    """Start a server process (``serve`` with ``args``) and wait until it answers HTTP.

    ``free_port`` releases the port it found before the server binds it, and other
    processes on the machine may take it meanwhile: then the server fails to bind (or
    something else answers there), and it is started again on another port.
    """
    if os.environ.get("SEENN_TEST_NO_SERVER_PROCESS") == "1":
        import pytest

        pytest.skip("starts a server process (SEENN_TEST_NO_SERVER_PROCESS=1)")
    for attempt in range(5):
        try:
            return _start_server(database_url, log_dir, env, port or free_port(), args, root)
        except PortTaken:
            if port is not None or attempt == 4:
                raise
    raise AssertionError("unreachable")


def _start_server(
    database_url: str,
    log_dir: Path,
    env: dict[str, str] | None,
    port: int,
    args: tuple[str, ...],
    root: Path,
) -> ServerProcess:
    full_env = {
        **os.environ,
        "SEENN_DATABASE_URL": database_url,
        "SEENN_AUTH_CACHE_SECONDS": "0",
        "SEENN_LOG_LEVEL": "warning",
        **(env or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    log_file = open(log_path, "wb")  # closed with the process
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "app.cli", "serve"),
            *("--host", "127.0.0.1", "--port", str(port), *args),
        ],
        cwd=root,  # the code under ``root`` is what runs (another checkout, in bench.compare)
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_until_it_answers(server, f"{server.url}/v1/jobs", "server", 30)
    except RuntimeError as exc:
        if "address already in use" in server.log().lower():
            raise PortTaken(str(exc)) from exc
        raise
    if not _listens(process.pid, port):  # an answer from someone else's process
        server.stop()
        raise PortTaken(f"port {port} answered, but not by the server started on it")
    return server


def _listens(pid: int, port: int) -> bool:
    """Whether ``pid`` or one of its children holds a listening TCP socket on ``port``
    (Linux /proc; True where /proc cannot tell)."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return True
    inodes = set()
    for table in tables:
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    for owner in (pid, *_children(pid)):
        with suppress(OSError):
            for fd in Path(f"/proc/{owner}/fd").iterdir():
                with suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return True
    return False


def _wait_until_it_answers(proc: Any, url: str, what: str, seconds: float) -> None:
    """Poll ``url`` until it answers HTTP; stop ``proc`` and raise with its log otherwise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{proc.log()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{what} did not start:\n{proc.log()}")


@contextmanager
def running_server(database_url: str, log_dir: Path, **kwargs: object) -> Iterator[ServerProcess]:
    server = start_server(database_url, log_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


# --- nginx in front of replicas (deploy/nginx/seenn.conf) -------------------------------

NGINX_SITE = ROOT / "deploy" / "nginx" / "seenn.conf"


def nginx_binary() -> str | None:
    """The nginx executable (Debian installs it in /usr/sbin, often not on PATH)."""
    import shutil

    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def write_nginx_config(
    directory: Path, upstreams: list[str], port: int, server_lines: tuple[str, ...] = ()
) -> Path:
    """A main nginx.conf in ``directory`` around the repository's ``seenn.conf``.

    Only what differs per environment is generated: the process settings (pid, logs and
    temp files in ``directory``, the current user), ``seenn.d/upstream.conf`` (``upstreams``,
    host:port each) and ``seenn.d/server.conf`` (a loopback ``listen`` and ``server_lines``).
    """
    import grp
    import pwd

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "seenn.d").mkdir(exist_ok=True)
    (directory / "seenn.d" / "upstream.conf").write_text(
        "".join(f"server {u} max_fails=1 fail_timeout=5s;\n" for u in upstreams)
    )
    (directory / "seenn.d" / "server.conf").write_text(
        "".join(f"{line}\n" for line in (f"listen 127.0.0.1:{port};", *server_lines))
    )
    user = ""
    if os.geteuid() == 0:  # workers would otherwise switch to "nobody" and lose the temp dirs
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    temp = "\n".join(
        f"    {name}_temp_path {directory / 'tmp' / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = directory / "nginx.conf"
    main.write_text(
        f"""{user}
daemon off;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
    access_log {directory / "access.log"};
{temp}
    include {NGINX_SITE};
}}
"""
    )
    (directory / "tmp").mkdir(exist_ok=True)
    return main


def nginx_command(config: Path, *args: str) -> list[str]:
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    # -e: the error log before the configuration is read (the default is under /var/log).
    return [
        binary,
        "-p",
        str(config.parent),
        "-c",
        str(config),
        "-e",
        str(config.parent / "error.log"),
        *args,
    ]


@dataclass
class NginxProcess:
    """An nginx master process (``daemon off``) on a loopback port."""

    url: str
    process: subprocess.Popen[bytes]
    directory: Path

    def stop(self) -> None:
        """Fast shutdown (SIGTERM): the master stops its workers, then exits."""
        if self.process.poll() is not None:
            return
        workers = _children(self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()  # workers outlive a killed master: end them too
            self.process.wait(5)
            for pid in workers:
                with suppress(ProcessLookupError):
                    os.kill(pid, 9)

    def log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def start_nginx(
    directory: Path, upstreams: list[str], server_lines: tuple[str, ...] = ()
) -> NginxProcess:
    """Start nginx with the repository's configuration and wait until it answers."""
    port = free_port()
    config = write_nginx_config(directory, upstreams, port, server_lines)
    process = subprocess.Popen(
        nginx_command(config), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    proxy = NginxProcess(f"http://127.0.0.1:{port}", process, directory)
    _wait_until_it_answers(proxy, f"{proxy.url}/healthz", "nginx", 15)
    return proxy
