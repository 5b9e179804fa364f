#!/usr/bin/env bash
# Mutation testing of the modules configured in pyproject.toml ([tool.mutmut]) against the
# tests that cover them, run in-process on one embedded PostgreSQL server
# (scripts/with_test_database.py). CPU-heavy; not part of CI. Results: docs/mutation.md.
#   scripts/mutation.sh            run (incremental: only changed functions are retried)
#   scripts/mutation.sh results    list surviving mutants;  mutmut show <name> shows one
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/mutmut ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,mutation]'
fi
if [ "${1:-run}" = results ]; then
  exec .venv/bin/mutmut results
fi
# The API tests drive the application in the test process, where mutmut sees it.
export SEENN_TEST_IN_PROCESS=1
# A test that starts a server process must not fail (and count a mutant as killed) only
# because a busy machine made the server slow to start.
export SEENN_TEST_SERVER_START_SECONDS=120
# One worker per spare core (the machine is shared): MUTATION_JOBS overrides.
exec nice -n 10 .venv/bin/python scripts/with_test_database.py \
  .venv/bin/mutmut run --max-children "${MUTATION_JOBS:-1}" "$@"
