#!/usr/bin/env bash
# The test command of the README (and of CI): set up, then run the suite
# offline with per-test durations. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$(bash "$ROOT/tools/setup_env.sh" | tail -n 1)"
cd "$ROOT"
HF_HUB_OFFLINE=1 "$PY" -m pytest tests --durations=25 "$@"
