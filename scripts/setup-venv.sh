#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment: operator, workers and dev tools.
# Skips the install when the requirement files have not changed since the last successful run.
set -euo pipefail
venv=${1:-.venv}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
stamp="$venv/.tuneops-stamp"
want=$(cat pyproject.toml requirements/*.txt scripts/setup-venv.sh | sha256sum | cut -c1-16)
# The merge's native kernel (operator/tuneops/workers/native): compiled in a second, skipped when built for
# its source; without a C compiler the merge uses torch, and this says so.
kernel() {
  "$venv/bin/python" -m tuneops.workers.kernel build >/dev/null \
    || echo "setup: the merge kernel was not built (no C compiler?): merges will use torch" >&2
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  kernel
  exit 0
fi
start=$(date +%s)
echo "setup: creating $venv (first run installs torch (CPU), transformers, peft, kopf; a few minutes)"
python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip setuptools wheel
# torch first, from the machine's local CPU wheel; a range would pull a multi-GB CUDA build.
"$venv/bin/pip" install -q "torch==2.13.0"
"$venv/bin/pip" install -q -e ".[worker,dev]"
kernel
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start ))s"
