#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run them.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools for the load-balancer, Dockerfile and dashboard tests (Debian packages).
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# docker-compose validates docker-compose.yml; --no-install-recommends keeps out docker.io.
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# PgBouncer in transaction mode (tests/db/test_pgbouncer.py starts its own).
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
# The dashboard's browser tests drive Debian's Chromium through Playwright (its own browser
# download is not used).
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null) \
    || echo "warning: could not install ${missing[*]}; tests that need them will be skipped" >&2
fi

python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
exec .venv/bin/pytest "$@"
