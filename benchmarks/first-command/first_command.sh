#!/usr/bin/env bash
# Time the README's first command on a fresh clone of this repository with an empty HOME (no pip or model
# caches), step by step, then each scan alone (canaries built; the backdoored scan's reference baseline
# computed again). Usage: bash benchmarks/first-command/first_command.sh [REPO]  (default: this checkout)
set -euo pipefail
REPO=${1:-$(git -C "$(dirname "$0")" rev-parse --show-toplevel)}
D=$(mktemp -d /tmp/first-command-XXXX)
git clone -q "$REPO" "$D/repo"
cd "$D/repo"
export HOME="$D/home"; mkdir -p "$HOME"
unset AMDET_AUDIT_CACHE XDG_CACHE_HOME
t0=$(date +%s.%N)
since() { python3 -c "import time; print(round(time.time() - $1, 1))"; }
python3 -m venv .venv && . .venv/bin/activate; echo "venv: $(since "$t0") s"
pip install -q torch==2.13.0; echo "torch installed: $(since "$t0") s"
pip install -q .; echo "package installed: $(since "$t0") s"
amdet-audit scan canary:clean > /dev/null; echo "canary:clean built and scanned (exit 0): $(since "$t0") s"
code=0; amdet-audit scan canary:backdoored > /dev/null || code=$?
echo "canary:backdoored built and scanned (exit $code): $(since "$t0") s"
rm -rf "$HOME/.cache/amdet-audit/baselines"
s=$(date +%s.%N); amdet-audit scan canary:backdoored --no-cache --out "$D/again" > /dev/null || true
echo "canary:backdoored scan alone, baseline computed: $(since "$s") s"
s=$(date +%s.%N); amdet-audit scan canary:clean --no-cache --out "$D/again-clean" > /dev/null
echo "canary:clean scan alone: $(since "$s") s"
rm -rf "$D"
