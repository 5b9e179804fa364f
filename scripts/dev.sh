#!/usr/bin/env bash
# Install the server and run it on an embedded PostgreSQL (data in ./.seenn, or
# $SEENN_DATA_DIR). Options are passed on to `seenn-server serve` (e.g. --port 9000).
# On the first run it creates a secret test key for the app "demo", prints it once and
# keeps it in <data folder>/demo-key, readable by you only.
set -euo pipefail
cd "$(dirname "$0")/.."
# PostgreSQL does not run as root. As root (a container, a CI box) this script is the opt-in
# that `seenn-server serve` asks for: PostgreSQL runs as the system user seenn-postgres
# (created if missing) with its data in /var/lib/seenn-server, and no other folder is touched.
if [ "$(id -u)" = 0 ] && [ -z "${DATABASE_URL:-}${SEENN_DATABASE_URL:-}" ]; then
  export SEENN_EMBEDDED_PG_USER="${SEENN_EMBEDDED_PG_USER:-seenn-postgres}"
  export SEENN_DATA_DIR="${SEENN_DATA_DIR:-/var/lib/seenn-server}"
  echo "Running as root: the embedded PostgreSQL runs as the system user" \
    "'$SEENN_EMBEDDED_PG_USER', with its data in $SEENN_DATA_DIR."
fi
data="${SEENN_DATA_DIR:-.seenn}"

# Install only when pyproject.toml changed since the last install (or nothing is installed).
stamp=.venv/.seenn-dev-installed
wanted="$(sha256sum pyproject.toml | cut -d ' ' -f 1)"
if [ ! -x .venv/bin/seenn-server ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "Installing seenn-server into .venv ..."
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e .
  echo "$wanted" > "$stamp"
fi

if [ ! -s "$data/demo-key" ]; then
  # The server creates the data folder; the key is captured, then written 0600. What the
  # command says on stderr (the embedded PostgreSQL starting) is said again by `serve`
  # below, so it is shown only if the command fails.
  log="$(mktemp)"
  if ! key="$(.venv/bin/seenn-server keys create --app demo --type secret --mode test 2>"$log" | tail -n 1)"; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  (umask 077 && printf '%s\n' "$key" > "$data/demo-key")
  echo "Your API key (app 'demo', test mode), shown only this once: $key"
  echo "It is kept in $data/demo-key (readable by you only)."
else
  chmod 600 "$data/demo-key"  # older versions wrote it world-readable
  echo "Your API key (app 'demo', test mode) is in $data/demo-key."
fi
echo "More keys: .venv/bin/seenn-server keys create --app demo --type public --mode test"
exec .venv/bin/seenn-server serve "$@"
