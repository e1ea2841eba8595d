#!/usr/bin/env bash
# docs/results/unrolled.md, "Where the replayed attack starts": the same multi-step updates
# attacked with the unrolled model from a random start and from the averaged pass's clips
# (--unrolled-start random|averaged); FSDD, Mel, the keyword CNN at its initial weights.
#   bash experiments/unrolled_start.sh [FSDD_ROOT] [OUT]   (defaults: ../shared/data/fsdd runs/unrolled-start)
# ROWS picks rows as in experiments/unrolled_fsdd.sh (the same simulate commands, so the same
# captures); STAGE1 the stage-1 budget of both audits (default: that script's).
set -euo pipefail
cd "$(dirname "$0")/.."
FSDD=${1:-../shared/data/fsdd}
OUT=${2:-runs/unrolled-start}
FS=${FEDSPEECH:-fedspeech}
PY=${PYTHON:-python}
STAGE1=${STAGE1:---iterations 4000 --restarts 1 --lr-start 0.1 --workers 2}
ROWS=${ROWS:-u2 u4 u8 b4x2}
mkdir -p "$OUT"

# shellcheck source=experiments/unrolled_rows.sh
source experiments/unrolled_rows.sh
runs=()
for name in $ROWS; do
  [ -n "${ARGS[$name]:-}" ] || { echo "unrolled_start.sh: unknown row $name; known: ${!ARGS[*]}" >&2; exit 2; }
  run="$OUT/$name"
  # shellcheck disable=SC2086
  [ -f "$run/metrics.json" ] || $FS simulate --config experiments/leakage_fsdd.toml \
    --data-root "$FSDD" --share update --out "$run" --overwrite --quiet ${ARGS[$name]}
  for start in random averaged; do
    if [ ! -d "$run-$start" ]; then
      mkdir -p "$run-$start" && cp -r "$run/config.toml" "$run/data" "$run/captures" "$run/truth" "$run-$start/"
    fi
    # shellcheck disable=SC2086
    $FS audit "$run-$start" $STAGE1 --update-model unrolled --unrolled-start "$start" --quiet
  done
  runs+=("$run")
done
$PY experiments/tables.py starts "${runs[@]}"
