#!/usr/bin/env bash
# Create .venv with kerve and every pinned dependency (requirements/constraints.txt), ready for
# `kerve quickstart` and the test suite. Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[dev]"
echo "kerve installed in $(pwd)/.venv"
