#!/usr/bin/env bash
# The fair-budget robust grid (benchmarks/robust_grid.py) end to end on a GPU machine, results copied to
# $OUT (the device tool brings $OUT back): table.md, results.json, every evaluation file and every run's
# config.json (recipe, metrics, DPL's amendment record). Resumable like the CPU grid: rerun to continue.
#   OUT=/tmp/grid-out bash benchmarks/robust_grid_gpu.sh            # extra flags go to robust_grid.py
set -euo pipefail
OUT=${OUT:-var/robust-grid-gpu-out}
ROOT=${ROOT:-var/robust-grid-gpu}
status=0
uv run python -m benchmarks.robust_grid --device cuda --workers "${WORKERS:-4}" --threads 2 --root "$ROOT" "$@" \
    || status=$?
mkdir -p "$OUT/runs"
cp "$ROOT/table.md" "$ROOT/results.json" "$OUT/" 2>/dev/null || true
cp -r "$ROOT/eval" "$ROOT/logs" "$OUT/" 2>/dev/null || true
for run in "$ROOT"/runs/*/; do
    [ -f "$run/config.json" ] && mkdir -p "$OUT/runs/$(basename "$run")" && cp "$run/config.json" "$OUT/runs/$(basename "$run")/"
done
exit $status
