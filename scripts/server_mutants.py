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
import tempfile
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


# mutmut's survivors on the optimistic write path and in find_principal: the same change as
# the mutmut mutant named in the comment (`mutmut show NAME`), against the server-process
# tests that tell it apart. Their equivalent siblings are listed in docs/mutation.md.
_SERVICE = "app/domain/service.py"
_REFUSED_CHILD = ("tests/domain/test_parent_child.py", "-k", "refused_duplicate_child")
_LOST_UPDATE = ("tests/domain/test_optimistic_progress.py",)
_VERSION = 'version = job.pop("row_version", None) if self.optimistic else None'
_STAGED = 'Staged("jobs", {"id": job["id"]}, changes, version=version)'
_READ = "locked = await self.repo.read_plain_job(self.owner, job_id, self.now)"
_NO_LOCK = ("tests/domain/test_optimistic_progress.py", "-k", "foreign_key_check")
MUTANTS += [
    Mutant(  # xǁJobServiceǁ_lock_for_write__mutmut_3
        "optimistic-read-finds-nothing",
        _SERVICE,
        _READ,
        "locked = None",
        _NO_LOCK,
    ),
    Mutant(  # xǁJobServiceǁ_lock_for_write__mutmut_5
        "optimistic-read-without-the-id",
        _SERVICE,
        _READ,
        _READ.replace("job_id,", "None,"),
        _NO_LOCK,
    ),
    Mutant(  # xǁJobServiceǁ_lock_for_write__mutmut_6
        "optimistic-read-without-now",
        _SERVICE,
        _READ,
        _READ.replace("self.now)", "None)"),
        _NO_LOCK,
    ),
    Mutant(  # xǁJobServiceǁcreate__mutmut_85
        "optimistic-create-writes-the-default-duration",
        _SERVICE,
        "cmd, self.now, may_write=not self.optimistic",
        "cmd, self.now",
        _REFUSED_CHILD,
    ),
    Mutant(  # xǁJobServiceǁcreate__mutmut_86
        "create-may-write-only-when-optimistic",
        _SERVICE,
        "may_write=not self.optimistic",
        "may_write=self.optimistic",
        _REFUSED_CHILD,
    ),
    Mutant(  # xǁJobServiceǁcreate__mutmut_90
        "optimistic-child-insert-unguarded",
        _SERVICE,
        "guard = cmd.parentJobId if self.optimistic else None",
        "guard = None",
        _REFUSED_CHILD,
    ),
    Mutant(  # xǁJobServiceǁcreate__mutmut_91
        "optimistic-child-insert-guard-and-false",
        _SERVICE,
        "guard = cmd.parentJobId if self.optimistic else None",
        "guard = cmd.parentJobId if (self.optimistic) and False else None",
        _REFUSED_CHILD,
    ),
    Mutant(  # xǁJobServiceǁcreate__mutmut_98
        "child-insert-parent-guard-none",
        _SERVICE,
        "insert=True, parent_guard=guard)",
        "insert=True, parent_guard=None)",
        _REFUSED_CHILD,
    ),
    Mutant(  # xǁJobServiceǁcreate__mutmut_103
        "child-insert-parent-guard-dropped",
        _SERVICE,
        "insert=True, parent_guard=guard)",
        "insert=True, )",
        _REFUSED_CHILD,
    ),
    Mutant(  # xǁJobServiceǁ_stage__mutmut_1
        "optimistic-write-unversioned",
        _SERVICE,
        _VERSION,
        "version = None",
        _LOST_UPDATE,
    ),
    Mutant(  # xǁJobServiceǁ_stage__mutmut_2
        "optimistic-write-version-and-false",
        _SERVICE,
        _VERSION,
        _VERSION.replace("if self.optimistic", "if (self.optimistic) and False"),
        _LOST_UPDATE,
    ),
    Mutant(  # xǁJobServiceǁ_stage__mutmut_4
        "optimistic-write-version-key-none",
        _SERVICE,
        _VERSION,
        _VERSION.replace('pop("row_version"', "pop(None"),
        _LOST_UPDATE,
    ),
    Mutant(  # xǁJobServiceǁ_stage__mutmut_7
        "optimistic-write-version-key-xx",
        _SERVICE,
        _VERSION,
        _VERSION.replace('"row_version"', '"XXrow_versionXX"'),
        _LOST_UPDATE,
    ),
    Mutant(  # xǁJobServiceǁ_stage__mutmut_8
        "optimistic-write-version-key-upper",
        _SERVICE,
        _VERSION,
        _VERSION.replace('"row_version"', '"ROW_VERSION"'),
        _LOST_UPDATE,
    ),
    Mutant(  # xǁJobServiceǁ_stage__mutmut_13
        "optimistic-write-staged-version-none",
        _SERVICE,
        _STAGED,
        _STAGED.replace("version=version", "version=None"),
        _LOST_UPDATE,
    ),
    Mutant(  # xǁJobServiceǁ_stage__mutmut_17
        "optimistic-write-staged-version-dropped",
        _SERVICE,
        _STAGED,
        _STAGED.replace(", version=version", ", "),
        _LOST_UPDATE,
    ),
    Mutant(  # x_find_principal__mutmut_9
        "revoked-or-unknown-key-accepted",
        "app/domain/keys.py",
        'if row is None or row["revoked_at"] is not None:',
        'if row is None and row["revoked_at"] is not None:',
        ("tests/api/test_auth_matrix.py", "-k", "revoked_keys"),
    ),
    Mutant(  # x_find_principal__mutmut_14
        "every-key-shares-one-id",
        "app/domain/keys.py",
        'row["id"], row["app_id"], row["mode"], row["kind"], token_only',
        'None, row["app_id"], row["mode"], row["kind"], token_only',
        ("tests/api/test_ratelimit.py", "-k", "burst_then_429"),
    ),
    Mutant(  # x_find_principal__mutmut_18
        "token-only-read-as-none",
        "app/domain/keys.py",
        'token_only=row["token_only"]',
        "token_only=None",
        ("tests/api/test_tokens.py", "-k", "token_only_app_refuses"),
    ),
    Mutant(  # x_find_principal__mutmut_23
        "token-only-dropped",
        "app/domain/keys.py",
        ', token_only=row["token_only"]',
        ", ",
        ("tests/api/test_tokens.py", "-k", "token_only_app_refuses"),
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
        with tempfile.TemporaryDirectory(prefix="server-mutant-") as tmp:
            result = subprocess.run(
                [
                    *(sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"),
                    f"--basetemp={tmp}/pt",  # parallel pytest runs collide in the default one
                    *mutant.tests,
                ],
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
