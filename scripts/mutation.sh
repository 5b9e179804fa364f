#!/usr/bin/env bash
# Mutation testing of the modules configured in pyproject.toml ([tool.mutmut]) against the
# tests that cover them, run in-process on one embedded PostgreSQL server
# (scripts/with_test_database.py). CPU-heavy; not part of CI. Results: docs/mutation.md.
#   scripts/mutation.sh            run (incremental: only changed functions are retried)
#   scripts/mutation.sh results    list surviving mutants;  mutmut show <name> shows one
#   scripts/mutation.sh summary    the count of each verdict, per module
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/mutmut ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,mutation]'
fi
if [ "${1:-run}" = results ]; then
  exec .venv/bin/mutmut results
fi
if [ "${1:-run}" = summary ]; then
  .venv/bin/mutmut results --all true | .venv/bin/python -c '
import collections, re, sys
counts = collections.defaultdict(collections.Counter)
for line in sys.stdin:
    name, _, verdict = line.strip().rpartition(": ")
    module = re.split(r"\.x(?:_|\u01c1)", name)[0]
    counts[module][verdict] += 1
for module, c in sorted(counts.items()):
    print(f"{module}: {sum(c.values())} mutants,", ", ".join(f"{n} {v}" for v, n in sorted(c.items())))
'
  exit
fi
# The API tests drive the application in the test process, where mutmut sees it; a test
# that needs a server process (SSE, several servers, restarts) is skipped: it is slow, and
# a server slow to start on a busy machine would pass for a killed mutant.
export SEENN_TEST_IN_PROCESS=1 SEENN_TEST_NO_SERVER_PROCESS=1
# One worker per spare core (the machine is shared): MUTATION_JOBS overrides.
exec nice -n 10 .venv/bin/python scripts/with_test_database.py \
  .venv/bin/mutmut run --max-children "${MUTATION_JOBS:-1}" "$@"
