#!/usr/bin/env bash
# Install the server and run it on an embedded PostgreSQL (data in ./.seenn).
# On the first run it creates a secret test key for the app "demo" and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e .
mkdir -p .seenn
if [ ! -s .seenn/demo-key ]; then
  .venv/bin/seenn-server keys create --app demo --type secret --mode test | tail -n 1 > .seenn/demo-key
fi
echo "Your API key (app 'demo', test mode): $(cat .seenn/demo-key)"
echo "More keys: .venv/bin/seenn-server keys create --app demo --type public --mode test"
exec .venv/bin/seenn-server serve "$@"
