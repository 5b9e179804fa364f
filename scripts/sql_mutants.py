"""Systematic mutants of the SQL of the event log and of the idempotency records.

mutmut (scripts/mutation.sh) mutates Python functions; the SQL of these modules is in
module-level ``text(...)`` constants, which it leaves alone. This script makes the SQL
mutants: every comparison operator, every AND/OR, every sort direction and every
IN / IS [NOT] NULL in those constants is changed, one at a time, in the file on disk, and
the fast tests of the module run against the real database with the application in the
test process (``SEENN_TEST_IN_PROCESS=1``, one database server for the whole run:
scripts/with_test_database.py). The file is restored after each mutant (also on Ctrl-C).

    python scripts/with_test_database.py .venv/bin/python scripts/sql_mutants.py
    python scripts/sql_mutants.py --list          # the mutants, without running anything
    python scripts/sql_mutants.py NAME ...        # only these

A mutant listed in EQUIVALENT must survive (it changes nothing observable; the reason is
given); any other survivor makes the run fail.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The modules and the tests that cover them (run in-process).
MODULES = {
    "app/db/eventlog.py": ("tests/db/test_eventlog.py",),
    "app/db/idempotency_repository.py": ("tests/api/test_idempotency.py",),
}

# (name, pattern, replacement): applied to one match at a time.
OPERATORS = [
    ("eq->ne", r"(?<![<>!=:\-])=(?![>=])", "<>"),
    ("lt->le", r"(?<![<\-])<(?![=>])", "<="),
    ("le->lt", r"<=", "<"),
    ("gt->ge", r"(?<![\-=>])>(?![=>])", ">="),
    ("ge->gt", r">=", ">"),
    ("and->or", r"\bAND\b", "OR"),
    ("or->and", r"\bOR\b", "AND"),
    ("desc->asc", r"\bDESC\b", "ASC"),
    ("in->not-in", r"(?<!NOT )\bIN \(", "NOT IN ("),
    ("is-null->is-not-null", r"\bIS NULL\b", "IS NOT NULL"),
    ("is-true->is-false", r"\bIS TRUE\b", "IS FALSE"),
    ("min->max", r"\bmin\(", "max("),
    ("now->+1h", r"\bnow\(\)", "(now() + interval '1 hour')"),
]

# Mutants that survive because they change nothing a caller can observe, with the reason.
EQUIVALENT: dict[str, str] = {}


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    start: int  # offset of the changed text in the file
    old: str
    new: str
    line: str  # the changed SQL line, mutated, for the listing


def _sql_constants(source: str) -> list[tuple[str, int, int]]:
    """(name, start, end) offsets of each module-level ``NAME = text(...)`` argument."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    found = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        call = node.value
        if not (isinstance(call.func, ast.Name) and call.func.id == "text" and call.args):
            continue
        arg = call.args[0]
        assert arg.end_lineno is not None and arg.end_col_offset is not None
        start = offsets[arg.lineno - 1] + arg.col_offset
        end = offsets[arg.end_lineno - 1] + arg.end_col_offset
        target = node.targets[0]
        found.append((target.id if isinstance(target, ast.Name) else "?", start, end))
    return found


def _assignment(before: str) -> bool:
    """Whether an ``=`` preceded by ``before`` sets a column (SET a = .., b = ..)."""
    rest = re.sub(r"[\w.]+\s*$", "", before).rstrip()
    return rest.endswith(("SET", ","))


def mutants() -> list[Mutant]:
    found = []
    for path in MODULES:
        source = (ROOT / path).read_text()
        module = Path(path).stem
        for constant, start, end in _sql_constants(source):
            segment = source[start:end]
            for op, pattern, replacement in OPERATORS:
                matches = [
                    m
                    for m in re.finditer(pattern, segment)
                    if not (op == "eq->ne" and _assignment(segment[: m.start()]))
                ]
                for i, match in enumerate(matches):
                    at = start + match.start()
                    line_start = source.rfind("\n", 0, at) + 1
                    line_end = source.find("\n", at)
                    mutated = source[:at] + replacement + source[at + len(match.group()) :]
                    shown = mutated[line_start : line_end + len(replacement) - len(match.group())]
                    found.append(
                        Mutant(
                            f"{module}.{constant}.{op}.{i + 1}",
                            path,
                            at,
                            match.group(),
                            replacement,
                            shown.strip().strip('"'),
                        )
                    )
    return found


def run(mutant: Mutant) -> bool:
    """True when the tests kill ``mutant`` (they fail with it applied)."""
    path = ROOT / mutant.path
    original = path.read_text()
    assert original[mutant.start : mutant.start + len(mutant.old)] == mutant.old
    mutated = original[: mutant.start] + mutant.new + original[mutant.start + len(mutant.old) :]
    path.write_text(mutated)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
            + list(MODULES[mutant.path]),
            cwd=ROOT,
            env={**os.environ, "SEENN_TEST_IN_PROCESS": "1", "SEENN_TEST_NO_SERVER_PROCESS": "1"},
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
    chosen = [m for m in mutants() if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.line}")
        return 0
    unexplained: list[str] = []
    stale: list[str] = []
    counts = {"killed": 0, "equivalent": 0, "survived": 0}
    for mutant in chosen:
        killed = run(mutant)
        if killed:
            verdict = "killed"
        elif mutant.name in EQUIVALENT:
            verdict = "equivalent"
        else:
            verdict = "survived"
            unexplained.append(mutant.name)
        counts[verdict] += 1
        print(f"{verdict:10} {mutant.name}: {mutant.line}", flush=True)
        if killed and mutant.name in EQUIVALENT:
            stale.append(mutant.name)  # called equivalent, yet a test tells it apart
    print(", ".join(f"{n} {v}" for v, n in counts.items()), f"of {len(chosen)}")
    if stale:
        print("killed, but listed in EQUIVALENT:", ", ".join(stale))
    return 1 if unexplained or stale else 0


if __name__ == "__main__":
    sys.exit(main())
