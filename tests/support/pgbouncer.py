"""A real PgBouncer (Debian's ``pgbouncer``) in transaction pooling mode, for tests."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.harness import free_port


def pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None


@contextmanager
def running_pgbouncer(database_url: str, pool_size: int = 4) -> Iterator[str]:
    """PgBouncer in front of ``database_url``'s database, ``pool_mode = transaction``, with
    at most ``pool_size`` server connections; yields the URL that goes through it.

    Its files live in a directory of their own under the system temp dir: run as root,
    PgBouncer switches to an unprivileged user, who must reach them (pytest's temp dirs
    are private to root)."""
    binary = pgbouncer_binary()
    assert binary is not None, "pgbouncer is not installed"
    target = make_url(database_url)
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="seenn-pgbouncer-"))
    directory.chmod(0o777)
    config = directory / "pgbouncer.ini"
    socket_dir = target.query.get("host")  # a Unix socket (the embedded server's)
    host = socket_dir if isinstance(socket_dir, str) else target.host or "127.0.0.1"
    server_port = target.query.get("port") or target.port or 5432
    server = f"host={host} port={server_port} dbname={target.database} user={target.username}" + (
        f" password={target.password}" if target.password else ""
    )
    config.write_text(
        "[databases]\n"
        f"{target.database} = {server}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        f"unix_socket_dir = {directory}\n"
        "auth_type = any\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 500\n"
        # The server's sessions carry these startup parameters; PgBouncer must accept them.
        "ignore_startup_parameters = extra_float_digits, statement_timeout\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        f"pidfile = {directory / 'pgbouncer.pid'}\n"
    )
    config.chmod(0o644)
    command = [binary, str(config)]
    if os.geteuid() == 0:  # PgBouncer refuses root: run as the owner of the server's socket
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
        command[1:1] = ["-u", "nobody" if owner == "root" else owner]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                log = directory / "pgbouncer.log"
                if process.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text() if log.exists() else ""
                    raise RuntimeError(f"pgbouncer did not start:\n{text}") from None
                time.sleep(0.05)
        through = target.set(host="127.0.0.1", port=port).difference_update_query(["host", "port"])
        yield through.render_as_string(hide_password=False)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        shutil.rmtree(directory, ignore_errors=True)
