"""Hand-written mutants of the server-side code (service, event log, idempotency SQL, auth,
database settings), each with the tests that must kill it.

mutmut (scripts/mutation.sh) only sees code that runs inside the test process; these
modules run inside the server process the tests start, so their mutants are listed here.
Each mutant is one textual replacement, applied to the working tree, tested, and reverted
(also on Ctrl-C). A mutant the tests do not kill makes the run fail.

    python scripts/server_mutants.py            # all of them (a few minutes)
    python scripts/server_mutants.py --list
    python scripts/server_mutants.py NAME ...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments


MUTANTS = [
    Mutant(
        "idempotency-key-not-scoped-by-app",  # audit row 1
        "app/db/idempotency_repository.py",
        'params = {"app_id": owner.app_id, "mode": owner.mode, "key": key}',
        'params = {"app_id": "*", "mode": owner.mode, "key": key}',
        ("tests/api/test_idempotency.py", "-k", "another_app"),
    ),
    Mutant(
        "idempotency-record-never-expires",
        "app/db/idempotency_repository.py",
        "WHERE k.created_at < :cutoff",
        "WHERE false",
        ("tests/api/test_idempotency.py", "-k", "older_than"),
    ),
    Mutant(
        "replay-parent-filter-null",  # audit row 2
        "app/db/eventlog.py",
        "payload->'parent'->>'parentJobId' AS parent_id\n    FROM events WHERE stream_id = :sid",
        "NULL AS parent_id\n    FROM events WHERE stream_id = :sid",
        ("tests/realtime/test_sse_replay.py", "-k", "narrowed"),
    ),
    Mutant(
        "resume-from-a-pruned-id-replays-with-a-gap",
        "app/realtime/connect.py",
        "resume = oldest is not None and oldest <= last_id + 1",
        "resume = oldest is not None and oldest <= last_id + 2",
        ("tests/realtime/test_sse.py", "-k", "pruned_id"),
    ),
    Mutant(
        "parent-eta-not-cleared",  # audit row 3
        "app/domain/service.py",
        'changes["completed_at"] = self.now\n            changes.update(NO_ETA)',
        'changes["completed_at"] = self.now\n            changes["estimated_completion_at"] = None',
        ("tests/api/test_eta_api.py", "-k", "last_child"),
    ),
    Mutant(
        "hub-poll-fallback-deleted",  # audit row 4
        "app/realtime/hub.py",
        "                async with asyncio.timeout(self.poll_interval):\n"
        "                    await self._wake.wait()",
        "                async with asyncio.timeout(None):\n"
        "                    await self._wake.wait()",
        ("tests/realtime/test_sse_replay.py", "-k", "lost"),
    ),
    Mutant(
        "statement-timeout-hard-coded",  # audit row 5
        "app/db/engine.py",
        'server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)',
        'server_settings["statement_timeout"] = "15000"',
        ("tests/db/test_db_outage.py", "-k", "statement_timeout"),
    ),
    Mutant(
        "pool-timeout-hard-coded",  # audit row 5
        "app/db/engine.py",
        "pool_timeout=settings.db_pool_timeout_seconds",
        "pool_timeout=10.0",
        ("tests/db/test_db_outage.py", "-k", "exhausted"),
    ),
    Mutant(
        "auth-cache-never-expires",
        "app/domain/keys.py",
        "if hit is None or hit[0] < time.monotonic():",
        "if hit is None:",
        ("tests/api/test_server_limits.py", "-k", "window"),
    ),
    Mutant(
        "sse-per-key-cap-ignored",
        "app/realtime/connections.py",
        "if not at_user_cap and self._open.get(key_id, 0) >= self.max_per_key:",
        "if False:",
        ("tests/api/test_server_limits.py", "-k", "per_key_cap"),
    ),
]


def run(mutant: Mutant) -> bool:
    """True when the tests kill ``mutant`` (they fail with it applied)."""
    path = ROOT / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.name}: the code to mutate is not found once in {mutant.path}")
    path.write_text(original.replace(mutant.old, mutant.new))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        path.write_text(original)
    return result.returncode != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    survivors = []
    for mutant in chosen:
        killed = run(mutant)
        print(f"{'killed  ' if killed else 'SURVIVED'} {mutant.name}", flush=True)
        if not killed:
            survivors.append(mutant.name)
    print(f"{len(chosen) - len(survivors)}/{len(chosen)} killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
