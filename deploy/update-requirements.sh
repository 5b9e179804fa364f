#!/usr/bin/env bash
# Regenerate deploy/requirements.txt, the exact runtime dependencies the Docker image
# installs: build the wheel, install it into a fresh venv (newest versions pyproject.toml
# allows), and freeze. Run it after changing [project] dependencies in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$work/venv/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$work/dist" .
"$work/venv/bin/pip" install -q --disable-pip-version-check "$work"/dist/seenn_server-*.whl
{
  sed -n '/^#/p' deploy/requirements.txt
  "$work/venv/bin/pip" freeze --exclude seenn-server --exclude pip
} > "$work/requirements.txt"
mv "$work/requirements.txt" deploy/requirements.txt
echo "deploy/requirements.txt: $(grep -vc '^#' deploy/requirements.txt) pinned packages" >&2
