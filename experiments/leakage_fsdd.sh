#!/usr/bin/env bash
# Every leakage figure of the README, from scratch:
#   bash experiments/leakage_fsdd.sh [FSDD_ROOT] [OUT]     (defaults: ../shared/data/fsdd runs/leakage)
# Runs are resumable: a finished simulation is kept, and `fedspeech audit` skips finished
# captures. The attack runs in $WORKERS processes (default 2) of one torch thread each,
# faster than one process of two threads on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
FSDD=${1:-../shared/data/fsdd}
OUT=${2:-runs/leakage}
FS=${FEDSPEECH:-fedspeech}
W=${WORKERS:-2}
mkdir -p "$OUT"

sim() {  # sim NAME ARGS...: simulate once into $OUT/NAME
  local name=$1; shift
  [ -f "$OUT/$name/metrics.json" ] || $FS simulate --data-root "$FSDD" --out "$OUT/$name" --overwrite --quiet "$@"
}

# Tables 2 and 3: Mel vs MFCC, batch 1, untrained model, 20 clips each.
for fe in mel mfcc; do
  sim "$fe" --config experiments/leakage_fsdd.toml --frontend "$fe"
  $FS audit --preset study "$OUT/$fe" --workers "$W" --quiet
done
# The study's weight with the total variation summed over entries (the L1 norms written
# out) instead of averaged (inversefed's, the default): a prior 992 times stronger here.
sim mel-sum --config experiments/leakage_fsdd.toml
$FS audit --preset study "$OUT/mel-sum" --tv-reduction sum --workers "$W" --quiet
# Training round: 6 clips at each of rounds 1, 30, 60 of one FedSGD run.
sim rounds --config experiments/leakage_rounds.toml
$FS audit --preset study "$OUT/rounds" --round 1 --round 30 --round 60 --workers "$W" --quiet

# Batch size, on a budget: one restart of at most 2000 steps for every batch size, batch 1
# included (4 captures of 1, 2 of 2, 1 of 4, 1 of 8: 4 clips each, 8 for batch 8).
for b in 1 2 4 8; do
  sim "b$b" --config experiments/leakage_fsdd.toml --batch-size "$b" --clients $(( b > 4 ? 1 : 4 / b ))
  $FS audit --preset study "$OUT/b$b" --iterations 2000 --restarts 1 --workers "$W" --quiet
done
# Shared updates (FedAvg) of 2 and 4 local SGD steps, one clip per step, attacked as one
# averaged gradient of the clips seen; compare with the gradients of batches of 2 and 4.
for k in 2 4; do
  sim "u$k" --config experiments/leakage_fsdd.toml --share update --local-steps "$k" --clients $(( 4 / k ))
  $FS audit --preset study "$OUT/u$k" --iterations 2000 --restarts 1 --workers "$W" --quiet
done
PY=${PYTHON:-python}
$PY experiments/tables.py table2 "$OUT/mel" "$OUT/mfcc" "$OUT/mel-sum"
$PY experiments/tables.py table3 "$OUT/mel" "$OUT/mfcc" "$OUT/mel-sum"
$PY experiments/tables.py sweep "$OUT/b1" "$OUT/b2" "$OUT/b4" "$OUT/b8" "$OUT/u2" "$OUT/u4" "$OUT/rounds"
