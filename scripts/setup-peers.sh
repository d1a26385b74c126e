#!/usr/bin/env bash
# Optional, for bench/peers.py only: the Python peers kerve is measured against, each in a venv of its own (their
# web stacks pin different FastAPI/Starlette versions): .venv-mlserver (MLServer) and .venv-kserve (KServe's
# ModelServer). What they share with kerve (numpy, protobuf, grpcio) is pinned to requirements/constraints.txt;
# TensorFlow is not installed twice: a .pth file puts .venv's site-packages after their own. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || ./scripts/setup.sh
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
kerve_site="$(purelib .venv/bin/python)"
for peer in mlserver==1.7.1 kserve==0.21.0; do
  venv=".venv-${peer%%=*}"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c requirements/constraints.txt "$peer"
  echo "$kerve_site" > "$(purelib "$venv/bin/python")/zz-kerve-tensorflow.pth"
  if [ "$venv" = .venv-mlserver ]; then
    # MLServer 1.7.1's inference worker asks uvloop for an event loop in a way uvloop 0.22+ refuses
    # ("There is no current event loop"): it needs the uvloop of its day, not kerve's pin
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "uvloop==0.21.0"
  fi
  echo "$peer installed in $(pwd)/$venv"
done
