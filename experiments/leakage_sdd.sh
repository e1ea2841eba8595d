#!/usr/bin/env bash
# The README's waveform-audit table, from scratch:
#   bash experiments/leakage_sdd.sh [OUT]     (default: runs/leakage-sdd)
# Resumable like leakage_fsdd.sh. Stage 1 on a budget: one restart of at most 2000 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/leakage-sdd}
FS=${FEDSPEECH:-fedspeech}
W=${WORKERS:-2}
mkdir -p "$OUT"
for variant in dropout no-dropout; do
  flags=()
  [ "$variant" = no-dropout ] && flags=(--no-dropout)
  [ -f "$OUT/$variant/metrics.json" ] ||
    $FS simulate --config experiments/leakage_sdd.toml --out "$OUT/$variant" --overwrite --quiet "${flags[@]}"
  $FS audit --preset study "$OUT/$variant" --iterations 2000 --restarts 1 --workers "$W" --quiet
done
${PYTHON:-python} experiments/tables.py waveform "$OUT/dropout" "$OUT/no-dropout"
