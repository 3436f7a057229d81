#!/usr/bin/env bash
# Idempotent set-up: a virtualenv (default ./.venv, or $VISTOK_VENV) with
# vistok installed editable plus its test requirements, at the exact
# versions of requirements/constraints.txt. Re-running is a no-op unless
# setup.py or a requirements file changed, so torch is installed once.
# Prints the venv's python path as its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VISTOK_VENV:-$ROOT/.venv}"
PY_BOOT="${PYTHON_BOOTSTRAP:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY_BOOT" -m venv "$VENV"
fi
STAMP="$VENV/.vistok-installed"
WANT="$(cat "$ROOT/setup.py" "$ROOT"/requirements/*.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$ROOT/requirements/constraints.txt" -e "$ROOT[tests]" >&2
    echo "$WANT" > "$STAMP"
fi
echo "$VENV/bin/python"
