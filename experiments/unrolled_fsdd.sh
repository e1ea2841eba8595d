#!/usr/bin/env bash
# docs/results/unrolled.md: updates of several local steps attacked with the unrolled model
# (the client's local training replayed), beside the averaged-gradient model and beside a
# gradient of the same clips; FSDD, Mel, the keyword CNN at its initial weights.
#   bash experiments/unrolled_fsdd.sh [FSDD_ROOT] [OUT]   (defaults: ../shared/data/fsdd runs/unrolled)
# Rows: K local SGD steps on one clip each (K = 2, 4, 8; 2 clients, both captured), and one
# pass over 8 or 16 clips at batch 4 (2 or 4 steps; 1 client). Each run is audited four
# times with the same stage-1 settings ($STAGE1): unrolled (RUN; --distance auto, i.e.
# cosine), averaged with the study's l2 (a copy, RUN-avg: the audit before the unrolled
# model) and with cosine (RUN-avgcos), and the gradient of the same clips (RUN-grad, l2,
# experiments/same_clips_gradient.py). ROWS picks rows (default: all five); UNROLLED adds
# flags to the unrolled audit only (e.g. "--unrolled-start random").
set -euo pipefail
cd "$(dirname "$0")/.."
FSDD=${1:-../shared/data/fsdd}
OUT=${2:-runs/unrolled}
FS=${FEDSPEECH:-fedspeech}
PY=${PYTHON:-python}
STAGE1=${STAGE1:---iterations 4000 --restarts 1 --lr-start 0.1 --workers 2}
ROWS=${ROWS:-u2 u4 u8 b4x2 b4x4}
UNROLLED=${UNROLLED:-}
mkdir -p "$OUT"

row() {  # row NAME SIMULATE-ARGS...
  local name=$1; shift
  local run="$OUT/$name"
  [ -f "$run/metrics.json" ] || $FS simulate --config experiments/leakage_fsdd.toml \
    --data-root "$FSDD" --share update --out "$run" --overwrite --quiet "$@"
  for copy in avg avgcos; do
    if [ ! -d "$run-$copy" ]; then
      mkdir -p "$run-$copy" && cp -r "$run/config.toml" "$run/data" "$run/captures" "$run/truth" "$run-$copy/"
    fi
  done
  [ -d "$run-grad" ] || $PY -m experiments.same_clips_gradient "$run" "$run-grad"
  # shellcheck disable=SC2086
  $FS audit "$run" $STAGE1 --update-model unrolled $UNROLLED --quiet
  # shellcheck disable=SC2086
  $FS audit "$run-avg" $STAGE1 --update-model averaged --distance l2 --quiet
  # shellcheck disable=SC2086
  $FS audit "$run-avgcos" $STAGE1 --update-model averaged --distance cosine --quiet
  # shellcheck disable=SC2086
  $FS audit "$run-grad" $STAGE1 --quiet
}

# shellcheck source=experiments/unrolled_rows.sh
source experiments/unrolled_rows.sh
runs=()
for name in $ROWS; do
  [ -n "${ARGS[$name]:-}" ] || { echo "unrolled_fsdd.sh: unknown row $name; known: ${!ARGS[*]}" >&2; exit 2; }
  # shellcheck disable=SC2086
  row "$name" ${ARGS[$name]}
  runs+=("$OUT/$name")
done
$PY experiments/tables.py unrolled "${runs[@]}"
