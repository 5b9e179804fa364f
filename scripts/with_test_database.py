"""Run a command with one embedded PostgreSQL server for all the test sessions it starts.

    python scripts/with_test_database.py COMMAND [ARG ...]

Starts the server the tests would start (``tests.support.harness``), exports its URL as
``SEENN_TEST_DATABASE_URL`` (each test session then creates its own database there, in a
fraction of a second, instead of starting a server of its own), runs the command and stops
the server. With ``SEENN_TEST_DATABASE_URL`` already set, that server is used. Each
session drops its database at its end (``SEENN_TEST_DROP_DATABASE``). The mutation run
(scripts/mutation.sh) runs hundreds of short test sessions this way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    os.environ["SEENN_TEST_DROP_DATABASE"] = "1"
    if os.environ.get("SEENN_TEST_DATABASE_URL"):
        return subprocess.call(argv)
    from tests.support.harness import EmbeddedForTests

    server = EmbeddedForTests(Path(tempfile.mkdtemp(prefix="seenn-mutation-")))
    try:
        return subprocess.call(argv, env={**os.environ, "SEENN_TEST_DATABASE_URL": server.url})
    except KeyboardInterrupt:
        return 130
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
