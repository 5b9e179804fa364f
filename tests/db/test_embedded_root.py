"""The embedded PostgreSQL started by root leaves the host alone.

Each test runs ``seenn-server migrate`` (no DATABASE_URL) as a real process and compares
the permissions of every folder it could have touched, and /etc/passwd, before and after.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db.embedded import _wheel_paths, is_root
from tests.support.harness import ROOT, TEST_PG_USER

pytestmark = pytest.mark.skipif(not is_root(), reason="the root-only path of the embedded start")


def snapshot(*paths: Path) -> dict[Path, tuple[int, int, int]]:
    """Mode, owner and group of each path, of every folder above it, and (for the wheel)
    of every folder and file inside it."""
    seen: dict[Path, tuple[int, int, int]] = {}
    for path in paths:
        for p in [*path.parents, path]:
            st = p.lstat()
            seen[p] = (st.st_mode, st.st_uid, st.st_gid)
    pginstall, libs = _wheel_paths()
    for top in (pginstall, libs):
        for p in [top, *top.rglob("*")]:
            st = p.lstat()
            seen[p] = (st.st_mode, st.st_uid, st.st_gid)
    return seen


def migrate(data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SEENN_DATABASE_URL", "DATABASE_URL", "SEENN_EMBEDDED_PG_USER")
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=ROOT,
        env={**clean, "SEENN_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def private_parent() -> Iterator[Path]:
    """A 0700 folder, as /root is: the data folder goes inside it."""
    folder = Path(tempfile.mkdtemp(prefix="seenn-private-"))
    assert folder.stat().st_mode & 0o777 == 0o700
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def open_parent(reachable_tmp: Path) -> Path:
    assert reachable_tmp.stat().st_mode & 0o777 == 0o711
    return reachable_tmp


def test_without_the_opt_in_root_is_refused_and_nothing_changes(private_parent: Path) -> None:
    data = private_parent / "data"
    passwd = Path("/etc/passwd").read_text()
    before = snapshot(private_parent)
    result = migrate(data)
    assert result.returncode == 2, result.stderr
    assert "Refusing to start the embedded PostgreSQL as root" in result.stderr
    assert "SEENN_EMBEDDED_PG_USER=" in result.stderr and "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(private_parent) == before
    assert Path("/etc/passwd").read_text() == passwd
    assert not (data / "pgdata").exists()


def test_with_the_opt_in_a_folder_the_user_cannot_reach_is_refused(
    private_parent: Path,
) -> None:
    data = private_parent / "data"
    before = snapshot(private_parent)
    result = migrate(data, SEENN_EMBEDDED_PG_USER=TEST_PG_USER)
    assert result.returncode == 2, result.stderr
    assert f"cannot enter {private_parent}" in result.stderr
    assert "SEENN_DATA_DIR" in result.stderr and "Traceback" not in result.stderr
    # The data folder itself is ours (created by the run); nothing above it changed.
    after = snapshot(private_parent)
    assert {p: m for p, m in after.items() if p != data} == before


def test_with_the_opt_in_postgres_runs_as_a_new_system_user_and_nothing_else_changes(
    open_parent: Path,
) -> None:
    user = f"seenn-t{secrets.token_hex(3)}"
    data = open_parent / "data"
    passwd = Path("/etc/passwd").read_text()
    before = snapshot(open_parent)
    try:
        first = migrate(data, SEENN_EMBEDDED_PG_USER=user)
        assert first.returncode == 0, first.stderr
        assert f"Created system user {user!r}" in first.stderr
        assert f"runs as system user {user!r}" in first.stderr  # said on the first run
        entry = pwd.getpwnam(user)
        added = set(Path("/etc/passwd").read_text().splitlines()) - set(passwd.splitlines())
        assert [line.split(":")[0] for line in added] == [user]
        assert entry.pw_shell in ("/usr/sbin/nologin", "/bin/false")

        assert snapshot(open_parent) == before  # every folder above the data folder
        assert data.stat().st_mode & 0o777 == 0o711  # created by the run: traversable only
        assert (data / "pgdata").stat().st_uid == entry.pw_uid
        assert (data / "pgdata").stat().st_mode & 0o777 == 0o700
        assert (data / "pgdata" / "PG_VERSION").exists()
        # The last process holding the server stopped it.
        assert not (data / "pgdata" / "postmaster.pid").exists()

        again = migrate(data, SEENN_EMBEDDED_PG_USER=user)
        assert again.returncode == 0, again.stderr
        assert "Created system user" not in again.stderr
        assert "runs as system user" not in again.stderr
        assert snapshot(open_parent) == before
    finally:
        subprocess.run(["userdel", user], capture_output=True, check=False)
