"""The wheel, installed the way the Dockerfile installs it, works outside the source tree.

Builds the wheel, installs it into a fresh venv with exactly deploy/requirements.txt (the
image's pins) and `pip check`s it, then runs the installed ``seenn-server`` from a folder
outside the repository: migrate an empty database, create a key, serve, and answer
/readyz and an authenticated API call. The image's HEALTHCHECK script is checked against it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.harness import ROOT, create_database, free_port


@dataclass
class Installed:
    venv: Path
    wheel: Path
    cwd: Path  # outside the repository: the source tree is not importable from here

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self, **extra: str) -> dict[str, str]:
        hidden = ("SEENN_", "DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(hidden)}
        return {**clean, "SEENN_LOG_LEVEL": "warning", **extra}

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.bin("seenn-server"), *args],
            cwd=self.cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )


def _pip(python: str, *args: str) -> None:
    subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        timeout=600,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    _pip(sys.executable, "wheel", "--no-deps", "-w", str(base / "dist"), str(ROOT))
    (wheel,) = (base / "dist").glob("seenn_server-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # As the Dockerfile does: the pinned dependencies, then the wheel alone.
    _pip(python, "install", "--no-compile", "-r", str(ROOT / "deploy" / "requirements.txt"))
    _pip(python, "install", "--no-compile", "--no-deps", str(wheel))
    # Fails when pyproject.toml gained a dependency: run deploy/update-requirements.sh.
    _pip(python, "check")
    cwd = base / "elsewhere"
    cwd.mkdir()
    return Installed(venv, wheel, cwd)


def test_wheel_carries_the_migrations_and_imports_from_the_venv(installed) -> None:
    import zipfile

    names = zipfile.ZipFile(installed.wheel).namelist()
    assert "app/_migrations/alembic.ini" in names and "app/_migrations/env.py" in names
    assert any(n.startswith("app/_migrations/versions/") for n in names)
    # The dashboard's templates and assets, and the vendored Swagger UI (with its licence).
    for asset in (
        "app/dashboard/templates/base.html",
        "app/dashboard/static/dashboard.js",
        "app/dashboard/static/dashboard.css",
        "app/static/swagger-ui/swagger-ui-bundle.js",
        "app/static/swagger-ui/LICENSE",
    ):
        assert asset in names, asset
    assert not any(n.startswith(("tests/", "bench/")) or "__pycache__" in n for n in names)
    where = subprocess.run(
        [installed.bin("python"), "-c", "import app; print(app.__file__)"],
        cwd=installed.cwd,
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(installed.venv)), where


@pytest.fixture
def empty_database(database_url: str) -> str:
    """A new, empty database (no schema) on the session's PostgreSQL server."""
    return create_database(database_url, "seenn_pkg")


@pytest.fixture
def serving(installed, empty_database) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The installed server on the empty database (not migrated yet)."""
    port = free_port()
    log = open(installed.cwd / f"serve-{port}.log", "wb")  # closed below
    process = subprocess.Popen(
        [installed.bin("seenn-server"), "serve"],
        cwd=installed.cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=installed.env(
            DATABASE_URL=empty_database, SEENN_HOST="127.0.0.1", SEENN_PORT=str(port)
        ),
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def _wait_for_readyz(base: str, process: subprocess.Popen[bytes], want: int) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "the installed server exited"
        try:
            r = httpx.get(f"{base}/readyz", timeout=2)
            if r.status_code == want:
                return r
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"/readyz never answered {want}"
        time.sleep(0.2)


def _healthcheck(installed: Installed, port: str) -> int:
    """The image's HEALTHCHECK command, run with the installed interpreter."""
    return subprocess.run(
        [installed.bin("python"), str(ROOT / "deploy" / "healthcheck.py")],
        cwd=installed.cwd,
        env=installed.env(SEENN_PORT=port),
        capture_output=True,
        timeout=30,
    ).returncode


def test_installed_server_migrates_serves_and_answers_with_a_created_key(
    installed, empty_database, serving
) -> None:
    base, process = serving
    port = base.rsplit(":", 1)[1]
    # Before `migrate`, the server runs but is not ready, and the HEALTHCHECK says so.
    not_ready = _wait_for_readyz(base, process, 503)
    assert not_ready.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert _healthcheck(installed, port) == 1

    migrated = installed.run("migrate", DATABASE_URL=empty_database)
    assert migrated.returncode == 0, migrated.stderr
    assert "up to date" in migrated.stderr
    assert _wait_for_readyz(base, process, 200).json()["status"] == "ready"
    assert _healthcheck(installed, port) == 0

    created = installed.run("keys", "create", "--app", "pkg", DATABASE_URL=empty_database)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    with httpx.Client(base_url=f"{base}/v1", headers={"Authorization": f"Bearer {key}"}) as c:
        made = c.post("/jobs", json={"jobType": "x", "userId": "u", "title": "t"})
        assert made.status_code == 201, made.text
        assert c.get(f"/jobs/{made.json()['id']}").json()["appId"] == "pkg"

    assert _healthcheck(installed, str(free_port())) == 1  # nothing listening: unhealthy
