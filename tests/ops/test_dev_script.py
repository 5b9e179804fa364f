"""scripts/dev.sh, run twice as a real process: the key is shown once and kept 0600, the
package is installed only when pyproject.toml changed, and options reach `serve`."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from app.db.embedded import is_root
from tests.support.harness import ROOT, TEST_PG_USER, free_port

STAMP = ROOT / ".venv" / ".seenn-dev-installed"


@pytest.fixture
def data_dir(reachable_tmp: Path) -> Path:
    return reachable_tmp / "data"


def run_dev(data_dir: Path, port: int) -> tuple[str, str]:
    """Start dev.sh with ``--port``, wait until it answers, stop it; its stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("SEENN_DATABASE_URL", "DATABASE_URL")}
    env["SEENN_DATA_DIR"] = str(data_dir)
    if is_root():
        env["SEENN_EMBEDDED_PG_USER"] = TEST_PG_USER
    out, err = data_dir.parent / "out.log", data_dir.parent / "err.log"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            ["bash", "scripts/dev.sh", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 300
            while True:
                assert process.poll() is None, err.read_text()
                assert time.monotonic() < deadline, err.read_text()
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    return out.read_text(), err.read_text()


def test_dev_script_shows_the_key_once_keeps_it_private_and_installs_once(
    data_dir: Path,
) -> None:
    port = free_port()
    first, first_err = run_dev(data_dir, port)
    key_file = data_dir / "demo-key"
    key = key_file.read_text().strip()
    assert key.startswith("sk_test_") and len(key) == 40
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert first.count(key) == 1 and "shown only this once" in first
    # A quiet start: the embedded database is announced once, Alembic's set-up lines not.
    assert first_err.count("No DATABASE_URL set") == 1, first_err
    assert "Context impl" not in first_err and "Will assume" not in first_err, first_err
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    assert STAMP.read_text().strip() == wanted

    key_file.chmod(0o644)  # as an older dev.sh left it
    second, second_err = run_dev(data_dir, free_port())
    assert key not in second and key not in second_err
    assert f"is in {data_dir}/demo-key" in second
    assert "Installing" not in second  # pyproject.toml did not change
    assert key_file.stat().st_mode & 0o777 == 0o600
